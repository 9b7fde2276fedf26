"""Transformer building blocks: RMSNorm, grouped-query attention, SwiGLU MLP.

Projections are fused (`qkv_proj`, `gate_up_proj`) so each block runs two matmuls
where a naive port runs five; `checkpoint.py` fills the fused weights from the
separate Hugging Face tensors.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmsys.kernels.attention import attention
from llmsys.model.config import ModelConfig
from llmsys.model.rope import Rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class KVCache(Protocol):
    """Where keys and values live between forward calls; it also runs the attention."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor, window: int | None) -> torch.Tensor: ...


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.window = cfg.sliding_windows[layer]
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=cfg.o_bias)
        norm = (lambda: RMSNorm(cfg.head_dim, cfg.rms_norm_eps)) if cfg.qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()
        self.rotary = Rotary()

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = self.q_norm(q.view(B, T, self.num_heads, self.head_dim))  # (B, T, Hq, D)
        k = self.k_norm(k.view(B, T, self.num_kv_heads, self.head_dim))  # (B, T, Hkv, D)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(q, k, cos, sin)
        if kv_cache is None:
            out = attention(q, k, v, positions, None, self.window)
        else:
            out = kv_cache.attend(self.layer, q, k, v, positions, self.window)
        return self.o_proj(out.reshape(B, T, q_size))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
