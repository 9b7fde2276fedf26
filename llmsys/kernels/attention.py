"""Attention over query/key positions with causal and sliding-window masking.

`attention(q, k, v, q_positions, k_positions, window)` is the reference path: PyTorch
SDPA with grouped-query heads. When the keys are exactly the queries' own causal prefix
and there is no window, it uses SDPA's `is_causal` fast path (no mask tensor at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor,
                   window: int | None) -> torch.Tensor:
    """Boolean (B, 1, Tq, Tk) mask: key j is visible to query i if
    k_pos[j] <= q_pos[i] and, with a window w, q_pos[i] - k_pos[j] < w."""
    q = q_positions[:, None, :, None]
    k = k_positions[:, None, None, :]
    visible = k <= q
    if window is not None:
        visible &= k > q - window
    return visible


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              q_positions: torch.Tensor, k_positions: torch.Tensor | None,
              window: int | None) -> torch.Tensor:
    """q (B, Tq, Hq, D), k/v (B, Tk, Hkv, D) -> (B, Tq, Hq, D).

    `k_positions=None` means the keys are the queries themselves (a prefill from position
    q_positions[:, 0] with no earlier context)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if k_positions is None and window is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=gqa)
    else:
        kp = q_positions if k_positions is None else k_positions
        mask = attention_mask(q_positions, kp, window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)
