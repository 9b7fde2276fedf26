"""A contiguous key/value cache: one (B, max_len, Hkv, D) buffer per layer.

Used by the simple generation loop. Tokens are written at their positions and attention
runs over everything written so far (all rows of the batch share positions).
"""

from __future__ import annotations

import torch

from llmsys.kernels.attention import attention


class ContiguousKVCache:
    def __init__(self, num_layers: int, batch: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch, max_len, num_kv_heads, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor, window: int | None) -> torch.Tensor:
        """Store k/v (B, T, Hkv, D) at `positions` (B, T), then attend q over the prefix."""
        start, end = int(positions[0, 0]), int(positions[0, -1]) + 1
        assert end - start == positions.shape[1] and end <= self.max_len
        self.k[layer][:, start:end] = k
        self.v[layer][:, start:end] = v
        if start == 0:  # nothing cached before: the plain causal path
            return attention(q, k, v, positions, None, window)
        k_positions = torch.arange(end, device=q.device).expand(q.shape[0], end)
        return attention(q, self.k[layer][:, :end], self.v[layer][:, :end], positions,
                         k_positions, window)
