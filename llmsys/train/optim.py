"""AdamW written out, the learning-rate schedule, and parameter groups for weight decay.

`AdamW` follows Loshchilov & Hutter (decoupled weight decay) with the bias corrections of
Adam, step for step as `torch.optim.AdamW` computes it (tests/train/test_optim.py checks the
two agree after 100 steps). It is a `torch.optim.Optimizer`, so `state_dict()` /
`load_state_dict()` and learning-rate changes through `param_groups` work as usual.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, "
                             f"{weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                # 1. decoupled weight decay, applied to the weights before the Adam update
                p.mul_(1 - lr * group["weight_decay"])
                # 2. first and second moments
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                # 3. bias-corrected step: p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
                bias1, bias2 = 1 - beta1**t, 1 - beta2**t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(group["eps"])
                p.addcdiv_(m, denom, value=-lr / bias1)
        return loss


def lr_at(step: int, *, max_lr: float, total_steps: int, warmup_steps: int,
          min_lr: float = 0.0) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms, biases or embeddings), each tensor once."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights are listed once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
