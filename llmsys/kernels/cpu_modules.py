"""Model layers swapped for ones that use the CPU decode kernels (gpt-fast style: the model
stays plain; `use_cpu_kernels(model)` changes it from outside).

- `CpuLinear`: at most 8 rows (decode) go through the C++ kernel; many rows in
  bfloat16/float16 on a CPU without native half arithmetic are widened to float32,
  multiplied and rounded back (exact in its inputs and several times faster there);
  anything else is `F.linear`.
- `CpuRMSNorm`: one C++ pass instead of eight PyTorch operations for decode-sized inputs,
  with the same rounding steps.
- `CpuRotary` and `CpuMLP`: the rotary embedding of q and k, and SwiGLU's silu(gate) * up,
  each one C++ call instead of eight and three PyTorch operations for decode-sized inputs,
  rounded as those operations are. At decode a layer is a handful of matmuls and many tiny
  operations whose dispatch cost adds up (the effect on a whole step is measured by
  `benchmarks/decode.py`; see docs/benchmarks.md).
"""

from __future__ import annotations

import time
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from llmsys.kernels.cpu import KERNEL_MAX_ROWS, kernels
from llmsys.model.layers import MLP, RMSNorm
from llmsys.model.rope import Rotary

_UPCAST_PROBED: dict[torch.dtype, bool] = {}


def upcast_is_faster(dtype: torch.dtype, size: int = 512, rows: int = 128) -> bool:
    """Whether a many-row half-precision matmul is faster widened to float32 on this CPU
    (timed once per dtype, a few tens of milliseconds)."""
    if dtype not in _UPCAST_PROBED:
        x, w = torch.randn(rows, size, dtype=dtype), torch.randn(size, size, dtype=dtype)

        def best(fn) -> float:
            fn()
            times = []
            for _ in range(3):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        native = best(lambda: F.linear(x, w))
        upcast = best(lambda: F.linear(x.float(), w.float()).to(dtype))
        _UPCAST_PROBED[dtype] = upcast < 0.8 * native
    return _UPCAST_PROBED[dtype]


def _no_grad() -> bool:
    """The C++ kernels have no backward: they serve inference only."""
    return not torch.is_grad_enabled()


class CpuLinear(nn.Linear):
    """nn.Linear choosing its CPU path per call by the number of rows (see module doc)."""

    upcast_min_rows = 16
    module: ModuleType | None = None  # the C++ kernels, when usable
    upcast = False  # widen many-row half-precision matmuls to float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.module is not None and 0 < rows <= KERNEL_MAX_ROWS and _no_grad():
            y = self.module.linear(x.reshape(rows, x.shape[-1]), self.weight)
            if self.bias is not None:
                y += self.bias
            return y.view(*x.shape[:-1], -1).to(x.dtype)
        if self.upcast and rows >= self.upcast_min_rows:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


class CpuRMSNorm(RMSNorm):
    """RMSNorm through the C++ kernel for at most 8 rows (same rounding steps)."""

    module: ModuleType | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if 0 < rows <= KERNEL_MAX_ROWS and x.dtype == self.weight.dtype and _no_grad():
            return self.module.rms_norm(x.reshape(rows, -1), self.weight, self.eps).view(x.shape)
        return super().forward(x)


def _decode_rows(x: torch.Tensor, row_dims: int = 1) -> int:
    """Rows of `x` (elements per row: the product of its last `row_dims` sizes) when the fused
    kernels take it (at most KERNEL_MAX_ROWS, no gradients), else 0."""
    rows = x.numel() // max(1, x.shape[-row_dims:].numel())
    return rows if 0 < rows <= KERNEL_MAX_ROWS and _no_grad() else 0


class CpuRotary(Rotary):
    module: ModuleType | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = _decode_rows(q, row_dims=2)  # q (B, T, H, D): a row per token
        if not rows or not q.is_cpu or q.shape[-1] != cos.shape[-1] or cos.dtype != q.dtype:
            return super().forward(q, k, cos, sin)
        D = q.shape[-1]
        qr, kr = self.module.rotary(q.reshape(rows, -1, D), k.reshape(rows, -1, D),
                                    cos.reshape(rows, D), sin.reshape(rows, D))
        return qr.view(q.shape), kr.view(k.shape)


class CpuMLP(MLP):
    module: ModuleType | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _decode_rows(x)
        if not rows:
            return super().forward(x)
        hidden = self.module.silu_mul(self.gate_up_proj(x).reshape(rows, -1))
        return self.down_proj(hidden.view(*x.shape[:-1], -1))


def _swap_fused(child: nn.Module, module: ModuleType) -> bool:
    """Turn a Rotary or MLP into its fused-kernel subclass in place (the subclasses add no
    state but the kernel module, so the parameters and submodules stay as they are)."""
    if type(child) is Rotary:
        child.__class__ = CpuRotary
    elif type(child) is MLP and child.gate_up_proj.weight.device.type == "cpu":
        child.__class__ = CpuMLP
    else:
        return False
    child.module = module
    return True


def use_cpu_kernels(model: nn.Module, compiled: bool = True) -> int:
    """Swap the model's CPU `nn.Linear`s for `CpuLinear`, `RMSNorm`s for `CpuRMSNorm`, and
    `Rotary` and `MLP` for their fused decode kernels, where that is faster; a model with no
    CPU parameters is left alone (and nothing is compiled). Parameters are shared, not
    copied (ties survive). `compiled=False` keeps to the PyTorch paths. Returns how many
    modules were swapped."""
    if not any(p.device.type == "cpu" for p in model.parameters()):
        return 0  # a model on another device: nothing to swap, nothing to compile
    swapped = 0
    module = kernels() if compiled else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if module is not None and _swap_fused(child, module):
                swapped += 1
                continue
            if type(child) is RMSNorm and module is not None and child.weight.device.type == "cpu":
                norm = CpuRMSNorm(child.weight.shape[0], child.eps)
                norm.weight, norm.module = child.weight, module
                setattr(parent, name, norm)
                swapped += 1
            if type(child) is not nn.Linear or child.weight.device.type != "cpu":
                continue
            w = child.weight
            usable = module is not None and w.shape[1] % 8 == 0 and w.is_contiguous()
            upcast = w.dtype in (torch.bfloat16, torch.float16) and upcast_is_faster(w.dtype)
            if not usable and not upcast:
                continue
            fast = CpuLinear(child.in_features, child.out_features, bias=False, device="meta")
            fast.weight, fast.bias = child.weight, child.bias
            fast.module, fast.upcast = (module if usable else None), upcast
            setattr(parent, name, fast)
            swapped += 1
    return swapped


