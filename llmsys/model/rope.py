"""Rotary position embeddings with the scaling types Llama and Qwen configs use.

`inverse_frequencies(rope, head_dim, max_position_embeddings, seq_len)` returns the per-pair
frequencies and the attention factor that multiplies cos/sin:
  default  theta^(-2i/d)
  linear   default / factor (position interpolation)
  dynamic  NTK-aware: theta grows with the sequence once it exceeds the trained context
  yarn     blend of interpolated and extrapolated frequencies by wavelength, plus mscale
  llama3   low frequencies divided by factor, high kept, a smooth ramp between
Everything is computed in float32, as the reference implementations do.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmsys.model.config import RopeConfig


def _default(theta: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (theta ** exponents)


def _yarn(rope: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    factor, orig = rope.factor, rope.original_max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        attention_factor = rope.attention_factor
    elif rope.mscale and rope.mscale_all_dim:
        attention_factor = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
    else:
        attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    index = torch.arange(dim // 2, dtype=torch.float32, device="cpu")
    ramp = ((index - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp  # 1 where the original frequency is kept
    base = rope.theta ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    inv_freq = (1.0 / (factor * base)) * (1 - extrapolation) + (1.0 / base) * extrapolation
    return inv_freq, float(attention_factor)


def _llama3(rope: RopeConfig, dim: int) -> torch.Tensor:
    inv_freq = _default(rope.theta, dim)
    orig, factor = rope.original_max_position_embeddings, rope.factor
    low_wavelen = orig / rope.low_freq_factor
    high_wavelen = orig / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    low_f, high_f = rope.low_freq_factor, rope.high_freq_factor
    smooth = (orig / wavelen - low_f) / (high_f - low_f)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def inverse_frequencies(rope: RopeConfig, head_dim: int, max_position_embeddings: int,
                        seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inv_freq of shape (head_dim/2,), attention factor). `seq_len` matters for dynamic only."""
    if rope.type == "default":
        return _default(rope.theta, head_dim), 1.0
    if rope.type == "linear":
        return _default(rope.theta, head_dim) / rope.factor, 1.0
    if rope.type == "dynamic":
        seq_len = max(seq_len or 0, max_position_embeddings)
        ratio = rope.factor * seq_len / max_position_embeddings - (rope.factor - 1)
        theta = rope.theta * ratio ** (head_dim / (head_dim - 2))
        return _default(theta, head_dim), 1.0
    if rope.type == "yarn":
        return _yarn(rope, head_dim)
    if rope.type == "llama3":
        return _llama3(rope, head_dim), 1.0
    raise AssertionError(rope.type)  # RopeConfig validated the type


class RotaryEmbedding(nn.Module):
    """Maps positions to (cos, sin) tables; `apply_rotary` rotates q or k with them."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_position_embeddings: int):
        super().__init__()
        self.rope, self.head_dim, self.max_pos = rope, head_dim, max_position_embeddings
        # A plain float32 attribute, not a buffer: `model.to(bfloat16)` must not round it.
        self.inv_freq, self.attention_factor = inverse_frequencies(
            rope, head_dim, max_position_embeddings)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin of shape (B, T, 1, head_dim) in `dtype`, the first
        half of sin negated (see `apply_rotary`)."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        inv_freq = self.inv_freq
        if self.rope.type == "dynamic":
            seq_len = int(positions.max()) + 1
            if seq_len > self.max_pos:
                inv_freq, _ = inverse_frequencies(self.rope, self.head_dim, self.max_pos, seq_len)
                inv_freq = inv_freq.to(positions.device)
        freqs = positions.float()[..., None] * inv_freq.float()  # (B, T, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_factor, emb.sin() * self.attention_factor
        sin[..., :self.head_dim // 2].neg_()
        return cos.to(dtype)[:, :, None], sin.to(dtype)[:, :, None]


class Rotary(nn.Module):
    """Rotates the queries and keys of an attention layer (a module, so that it can be swapped
    from outside, as `kernels.cpu_modules` does for decoding)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D); cos/sin (B, T, 1, D) from `RotaryEmbedding`. Rotates the two halves
    (x1, x2) of each head: (x1 cos - x2 sin, x2 cos + x1 sin). With the first half of `sin`
    stored negated this is x * cos + roll(x) * sin: the same products, bit for bit, as the
    usual concatenation of (-x2, x1), in fewer operations."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin
