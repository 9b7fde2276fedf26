"""Attention kernels: contiguous (SDPA) and over a paged KV cache (reference and tiled).

Masking everywhere: key position j is visible to a query at position i when j <= i and,
with a sliding window w, i - j < w.

- `attention(q, k, v, q_positions, k_positions, window)`: contiguous tensors, PyTorch SDPA.
- `paged_attention_reference(...)`: gathers each sequence's keys/values out of the block
  table and runs SDPA with an explicit mask; simple and obviously right, used by the tests.
- `paged_attention(...)`: the tiled, online-softmax ("flash-attention style") path. Keys are
  visited tile by tile with a running max, normaliser and accumulator per query, so no
  Tq x Tk score matrix is ever formed; tiles wholly outside the causal/window range are
  skipped. Decoding sequences (one query each) are processed together, prefilling ones one
  by one in query tiles.

The paged cache is one (num_blocks, block_size, Hkv, D) tensor per layer for keys and one
for values; a sequence's block table lists its blocks in position order (-1 for blocks that
fell out of a sliding window and were freed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor,
                   window: int | None) -> torch.Tensor:
    """Boolean (B, 1, Tq, Tk) mask of visible keys."""
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

    `k_positions=None` means the keys are the queries themselves (a prefill with no earlier
    context); without a window that takes SDPA's `is_causal` path (no mask tensor)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if k_positions is None and window is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=gqa)
    else:
        kp = q_positions if k_positions is None else k_positions
        mask = attention_mask(q_positions, kp, window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)


@dataclass
class PagedBatch:
    """Where each sequence's queries sit in the flat batch and where its keys live.

    Sequence i owns queries q[q_starts[i] : q_starts[i] + q_lens[i]], at positions
    context_lens[i] - q_lens[i] ... context_lens[i] - 1; its keys are positions
    0 ... context_lens[i] - 1, stored in block_tables[i] (a (num_seqs, max_blocks) int64
    tensor padded with -1)."""

    q_starts: list[int]
    q_lens: list[int]
    context_lens: list[int]
    block_tables: torch.Tensor

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)


def _slots(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat cache slots of `positions` (any shape, same leading dims as block_table rows)."""
    blocks = block_table.gather(-1, (positions // block_size).clamp(min=0))
    # Masked-out positions may point at freed blocks (-1): clamp to a valid slot.
    return (blocks * block_size + positions % block_size).clamp(min=0)


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              batch: PagedBatch, window: int | None) -> torch.Tensor:
    """q (N, Hq, D) -> (N, Hq, D): per sequence, gather all keys and run masked SDPA."""
    block_size = k_cache.shape[1]
    k_flat, v_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    out = torch.empty_like(q)
    for i in range(batch.num_seqs):
        start, n, ctx = batch.q_starts[i], batch.q_lens[i], batch.context_lens[i]
        k_pos = torch.arange(ctx, device=q.device)
        visible = k_pos > ctx - n - (window or ctx + 1)  # only keys someone can still see
        k_pos = k_pos[visible]
        slots = _slots(batch.block_tables[i], k_pos, block_size)
        q_pos = torch.arange(ctx - n, ctx, device=q.device)
        out[start:start + n] = attention(q[None, start:start + n], k_flat[slots][None],
                                         v_flat[slots][None], q_pos[None], k_pos[None],
                                         window)[0]
    return out


class _OnlineSoftmax:
    """Running max m, normaliser l and accumulator acc of softmax(scores) @ values."""

    def __init__(self, shape: tuple[int, ...], dim: int, device: torch.device):
        self.m = torch.full(shape, float("-inf"), device=device)
        self.l = torch.zeros(shape, device=device)
        self.acc = torch.zeros(*shape, dim, device=device)

    def update(self, scores: torch.Tensor, values: torch.Tensor) -> None:
        """scores (..., Tk) float32 with -inf where masked; values (..., Tk, D)."""
        m_new = torch.maximum(self.m, scores.amax(-1))
        # Rows that have seen only masked keys keep m = -inf; shift by 0 there to avoid NaN.
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(scores - shift[..., None])
        scale = torch.exp(self.m - shift)
        self.l = self.l * scale + p.sum(-1)
        self.acc = self.acc * scale[..., None] + p @ values
        self.m = m_new

    def result(self) -> torch.Tensor:
        return self.acc / self.l[..., None]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    batch: PagedBatch, window: int | None, tile: int = 256,
                    decode_tile: int = 1024, k_new: torch.Tensor | None = None,
                    v_new: torch.Tensor | None = None) -> torch.Tensor:
    """Tiled online-softmax attention over the paged cache. q (N, Hq, D) -> (N, Hq, D).

    `tile` is the query and key tile of prefills, `decode_tile` the key tile of decodes.
    Given this step's own keys/values `k_new`/`v_new` (N, Hkv, D), a sequence with no
    earlier context and no window takes SDPA's causal flash kernel instead (also free of
    a T x T matrix on CPU and GPU, and faster)."""
    out = torch.empty_like(q)
    decode = [i for i in range(batch.num_seqs) if batch.q_lens[i] == 1]
    if decode:
        _decode_tiled(q, k_cache, v_cache, batch, decode, window, out, decode_tile)
    for i in range(batch.num_seqs):
        start, n = batch.q_starts[i], batch.q_lens[i]
        if n == 1:
            continue
        if k_new is not None and window is None and n == batch.context_lens[i]:
            s = slice(start, start + n)
            out[s] = attention(q[None, s], k_new[None, s], v_new[None, s], None, None, None)[0]
        else:
            _prefill_tiled(q, k_cache, v_cache, batch, i, window, out, tile)
    return out


def _decode_tiled(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  batch: PagedBatch, seqs: list[int], window: int | None, out: torch.Tensor,
                  tile: int) -> None:
    """One query per sequence; all of them walk their keys together, tile by tile."""
    dev, block_size = q.device, k_cache.shape[1]
    S, Hq, D = len(seqs), q.shape[1], q.shape[2]
    Hkv = k_cache.shape[2]
    G = Hq // Hkv
    k_flat, v_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    idx = torch.tensor([batch.q_starts[i] for i in seqs], device=dev)
    ctx = torch.tensor([batch.context_lens[i] for i in seqs], device=dev)
    tables = batch.block_tables[torch.tensor(seqs, device=dev)]
    qs = q[idx].float().view(S, Hkv, G, D) * D ** -0.5  # (S, Hkv, G, D)
    q_pos = ctx - 1
    lo = 0 if window is None else max(0, min(batch.context_lens[i] for i in seqs) - window)
    lo -= lo % tile
    state = _OnlineSoftmax((S, Hkv, G), D, dev)
    for start in range(lo, max(batch.context_lens[i] for i in seqs), tile):
        k_pos = torch.arange(start, start + tile, device=dev).expand(S, tile)  # (S, t)
        visible = k_pos <= q_pos[:, None]
        if window is not None:
            visible &= k_pos > (q_pos - window)[:, None]
        slots = _slots(tables, torch.where(visible, k_pos, 0), block_size)
        k = k_flat[slots].float().permute(0, 2, 3, 1)  # (S, Hkv, D, t)
        v = v_flat[slots].float().transpose(1, 2)  # (S, Hkv, t, D)
        scores = (qs @ k).masked_fill(~visible[:, None, None, :], float("-inf"))
        state.update(scores, v)
    out[idx] = state.result().view(S, Hq, D).to(out.dtype)


def _prefill_tiled(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   batch: PagedBatch, i: int, window: int | None, out: torch.Tensor,
                   tile: int) -> None:
    """Queries of one sequence in tiles; each query tile visits only the key tiles its
    causal window can see."""
    dev, block_size = q.device, k_cache.shape[1]
    Hq, D, Hkv = q.shape[1], q.shape[2], k_cache.shape[2]
    G = Hq // Hkv
    k_flat, v_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    start, n, ctx = batch.q_starts[i], batch.q_lens[i], batch.context_lens[i]
    table = batch.block_tables[i]
    first_pos = ctx - n
    for q0 in range(0, n, tile):
        q1 = min(q0 + tile, n)
        q_pos = torch.arange(first_pos + q0, first_pos + q1, device=dev)  # (tq,)
        tq = q1 - q0
        # (Hkv, G * tq, D): the queries of each kv head's group stacked together.
        qs = (q[start + q0:start + q1].float() * D ** -0.5).view(tq, Hkv, G, D)
        qs = qs.permute(1, 2, 0, 3).reshape(Hkv, G * tq, D)
        k_lo = 0 if window is None else max(0, first_pos + q0 - window + 1)
        state = _OnlineSoftmax((Hkv, G * tq), D, dev)
        for k0 in range(k_lo - k_lo % tile, first_pos + q1, tile):
            k_pos = torch.arange(k0, min(k0 + tile, first_pos + q1), device=dev)  # (tk,)
            visible = k_pos[None, :] <= q_pos[:, None]  # (tq, tk)
            if window is not None:
                visible &= k_pos[None, :] > q_pos[:, None] - window
            slots = _slots(table, torch.where(visible.any(0), k_pos, 0), block_size)
            k = k_flat[slots].float().permute(1, 2, 0)  # (Hkv, D, tk)
            v = v_flat[slots].float().transpose(0, 1)  # (Hkv, tk, D)
            scores = (qs @ k).view(Hkv, G, tq, -1).masked_fill(~visible, float("-inf"))
            state.update(scores.view(Hkv, G * tq, -1), v)
        res = state.result().view(Hkv, G, tq, D).permute(2, 0, 1, 3).reshape(tq, Hq, D)
        out[start + q0:start + q1] = res.to(out.dtype)
