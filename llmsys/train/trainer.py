"""The training loop shared by pretraining and supervised fine-tuning.

    history = train(model, hf_config, rows, eval_rows, TrainConfig(out_dir=...), ...)

Pretraining and SFT differ only in their rows (see `data.py`: every token a target, or the
assistant's tokens only). Each optimizer step:
1. takes `grad_accum` micro-batches of `batch_size` packed rows, in an order that is a pure
   function of (seed, step) — so a resumed run sees exactly the batches the uninterrupted one
   would have seen, with no sampler state to save;
2. runs forward and backward (bfloat16 autocast on GPU, float32 on CPU), the loss being the
   mean over all target tokens of the step (padding and masked tokens weigh nothing, so a
   padded batch has the loss of the unpadded one);
3. clips the gradient norm, sets the warmup + cosine learning rate and steps `AdamW`;
4. every `eval_every` steps measures the held-out loss and bits per byte; every `save_every`
   steps (and at the end) writes a checkpoint: the model in the Hugging Face layout that
   `LLM(...)` loads, plus `trainer_state.pt` (weights, optimizer, step, history) for an
   exact resume.
Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel and the
ranks take interleaved micro-batches; rank 0 writes everything.
Progress shows as a bar; `history.json` and `loss.png` (the loss curves) go to `out_dir`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from llmsys.model.checkpoint import save_checkpoint
from llmsys.model.transformer import Transformer
from llmsys.train.data import IGNORE_INDEX, DocumentMask, Row, collate
from llmsys.train.optim import AdamW, lr_at, param_groups

STATE_FILE = "trainer_state.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json")


@dataclass
class TrainConfig:
    out_dir: str | os.PathLike
    steps: int = 1000
    batch_size: int = 8  # rows per micro-batch (per rank)
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    eval_every: int = 100
    save_every: int = 200
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], "
                             f"got {self.warmup_steps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_bpb: list[float] = field(default_factory=list)
    tokens: int = 0  # target tokens seen
    seconds: float = 0.0  # training wall time, summed over resumed runs


def init_weights(model: Transformer, seed: int) -> None:
    """GPT-2 style: N(0, 0.02) matrices and embeddings, output projections scaled down by
    sqrt(2 * layers), zero biases, unit norms."""
    gen = torch.Generator().manual_seed(seed)
    scaled = ("o_proj.weight", "down_proj.weight")
    std_out = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                std = std_out if name.endswith(scaled) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def batch_rows(rows: list[Row], step: int, micro: int, cfg: TrainConfig, rank: int = 0,
               world: int = 1) -> list[Row]:
    """The rows of micro-batch `micro` of `step` on `rank`: consecutive slices of an epoch-wise
    permutation seeded by (seed, epoch), so the order depends on nothing but these numbers."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    first = step * per_step + (micro * world + rank) * cfg.batch_size
    out = []
    for index in range(first, first + cfg.batch_size):
        epoch, offset = divmod(index, len(rows))
        perm = _permutation(len(rows), cfg.seed, epoch)
        out.append(rows[perm[offset]])
    return out


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


class TokenLoss(nn.Module):
    """The model and its training loss, as one module (DDP wraps it whole): the sum over target
    tokens of the cross-entropy. Only target positions go through the LM head; in SFT most
    positions are prompt or tool results, and the head is a quarter of a small model's work."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = DocumentMask(batch["doc_ids"], batch["positions"])
        hidden = self.model.hidden_states(batch["ids"], batch["positions"], mask)
        target = batch["labels"] != IGNORE_INDEX
        logits = self.model.logits(hidden[target])
        return F.cross_entropy(logits.float(), batch["labels"][target],
                               label_smoothing=self.label_smoothing, reduction="sum")


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor],
                   label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over target tokens of the cross-entropy (the caller divides by the token count)."""
    return TokenLoss(model, label_smoothing)(batch)


@torch.no_grad()
def evaluate(model: nn.Module, rows: list[Row], token_bytes: torch.Tensor, device: str,
             batch_size: int = 8) -> tuple[float, float]:
    """(mean loss per target token, bits per byte) over `rows`. Targets that are special
    tokens (zero bytes of text) count in the loss but not in bits per byte."""
    was_training = model.training
    model.eval()
    nats = nats_text = 0.0
    tokens = nbytes = 0
    token_bytes = token_bytes.to(device)
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size]).items()}
        with _autocast(device):
            logits = model(batch["ids"], batch["positions"],
                           DocumentMask(batch["doc_ids"], batch["positions"]))
        labels = batch["labels"].flatten()
        losses = F.cross_entropy(logits.flatten(0, 1).float(), labels,
                                 ignore_index=IGNORE_INDEX, reduction="none")
        target = labels != IGNORE_INDEX
        per_token = token_bytes[labels.clamp(min=0)] * target
        nats += losses.sum().item()
        tokens += int(target.sum())
        nats_text += (losses * (per_token > 0)).sum().item()
        nbytes += int(per_token.sum())
    model.train(was_training)
    return nats / max(tokens, 1), nats_text / (math.log(2) * max(nbytes, 1))


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(model: Transformer, hf_config: dict, rows: list[Row], eval_rows: list[Row],
          cfg: TrainConfig, *, token_bytes: torch.Tensor, tokenizer_dir: str | os.PathLike,
          resume: bool = False) -> History:
    """Train `model` on `rows` for `cfg.steps` optimizer steps; see the module docstring."""
    if not rows:
        raise ValueError("no training rows: the training data is empty")
    out = Path(cfg.out_dir)
    rank, world = _distributed()
    model.to(cfg.device).train()
    opt = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    history, start = History(), 0
    if resume and (out / STATE_FILE).is_file():
        start, history = _load_state(model, opt, out, cfg.device)
    wrapped: nn.Module = TokenLoss(model, cfg.label_smoothing)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped)
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress or rank != 0,
               desc="train", unit="step", dynamic_ncols=True)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, max_lr=cfg.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                   min_lr=cfg.min_lr)
        loss, tokens = _train_step(wrapped, opt, rows, step, cfg, lr, rank, world)
        history.seconds += time.perf_counter() - t0
        history.steps.append(step + 1)
        history.loss.append(loss)
        history.lr.append(lr)
        history.tokens += tokens
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}",
                        tok_s=f"{history.tokens / max(history.seconds, 1e-9):.0f}")
        bar.update()
        last = step + 1 == cfg.steps
        if eval_rows and ((step + 1) % cfg.eval_every == 0 or last):
            eval_loss, bpb = evaluate(model, eval_rows, token_bytes, cfg.device)
            history.eval_steps.append(step + 1)
            history.eval_loss.append(eval_loss)
            history.eval_bpb.append(bpb)
            bar.write(f"step {step + 1}: train loss {loss:.4f}, eval loss {eval_loss:.4f}, "
                      f"eval bpb {bpb:.4f}")
        if rank == 0 and ((step + 1) % cfg.save_every == 0 or last):
            save(model, hf_config, opt, history, out, tokenizer_dir)
    bar.close()
    if rank == 0:
        plot_history(history, out / "loss.png")
    return history


def _train_step(loss_model: nn.Module, opt: AdamW, rows: list[Row], step: int, cfg: TrainConfig,
                lr: float, rank: int, world: int) -> tuple[float, int]:
    """One optimizer step over grad_accum micro-batches; returns (mean loss, target tokens)."""
    micro = [collate(batch_rows(rows, step, m, cfg, rank, world)) for m in range(cfg.grad_accum)]
    count = torch.tensor(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro))
    if world > 1:
        dist.all_reduce(count)  # the loss is a mean over the targets of every rank
    total = max(int(count), 1)
    loss_sum = 0.0
    for batch in micro:
        batch = {k: v.to(cfg.device) for k, v in batch.items()}
        with _autocast(cfg.device):
            loss = loss_model(batch)
        # DDP averages gradients over ranks; scale back up so the result is the global mean.
        (loss * world / total).backward()
        loss_sum += loss.item()
    for group in opt.param_groups:
        group["lr"] = lr
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(loss_model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if world > 1:
        reduced = torch.tensor(loss_sum)
        dist.all_reduce(reduced)
        loss_sum = float(reduced)
    return loss_sum / total, total


def save(model: Transformer, hf_config: dict, opt: AdamW, history: History, out: Path,
         tokenizer_dir: str | os.PathLike) -> None:
    """The model (HF layout) and tokenizer in `out`, plus trainer_state.pt for resuming.

    trainer_state.pt holds the weights too, so it alone is enough to resume; every file is
    written under a temporary name and renamed, so an interruption never leaves half a file."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(model, hf_config, staging)
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file() and src.resolve() != (out / name).resolve():
            shutil.copyfile(src, staging / name)
    state = {"step": history.steps[-1] if history.steps else 0, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "history": asdict(history)}
    torch.save(state, staging / STATE_FILE)
    (staging / "history.json").write_text(json.dumps(asdict(history)) + "\n")
    for file in staging.iterdir():  # the state last: it is what a resume reads
        if file.name != STATE_FILE:
            os.replace(file, out / file.name)
    os.replace(staging / STATE_FILE, out / STATE_FILE)
    staging.rmdir()


def _load_state(model: Transformer, opt: AdamW, out: Path, device: str) -> tuple[int, History]:
    state = torch.load(out / STATE_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["step"], History(**state["history"])


def plot_history(history: History, path: Path) -> None:
    """Training loss per step and held-out loss at each evaluation, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no {path.name} (pip install 'llmsys[train]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history.steps, history.loss, lw=0.8, label="train loss")
    if history.eval_steps:
        ax.plot(history.eval_steps, history.eval_loss, "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
