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
  by one in query tiles. On CPUs where `llmsys.kernels.cpu` compiled, decodes instead take
  its C++ kernel (`compiled=True`), which walks the blocks in place with no gather.

The paged cache is one (Hkv, num_blocks, block_size, D) tensor per layer for keys and one
for values: head-major, so gathering a sequence's blocks yields (Hkv, tokens, D) directly,
ready for batched matmuls without a layout copy. A sequence's block table lists its blocks
in position order (-1 for blocks that fell out of a sliding window and were freed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmsys.kernels import cpu


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
    plans: dict = field(default_factory=dict, repr=False)  # per-step work shared by layers

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             blocks: torch.Tensor, offsets: torch.Tensor) -> None:
    """Store k/v (N, Hkv, D) of N tokens at (block, offset) in caches (Hkv, blocks, bs, D)."""
    if cpu.write_kv(k_cache, v_cache, k, v, blocks, offsets):
        return
    k_cache[:, blocks, offsets] = k.transpose(0, 1)
    v_cache[:, blocks, offsets] = v.transpose(0, 1)


def _gather_blocks(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(Hkv, blocks, bs, D) cache, n block ids -> (Hkv, n * bs, D) in position order."""
    Hkv, num_blocks, bs, D = cache.shape
    rows = torch.arange(Hkv, device=cache.device)[:, None] * num_blocks + blocks.clamp(min=0)
    return cache.view(-1, bs * D).index_select(0, rows.view(-1)).view(Hkv, -1, D)


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              batch: PagedBatch, window: int | None) -> torch.Tensor:
    """q (N, Hq, D) -> (N, Hq, D): per sequence, gather all keys and run masked SDPA."""
    block_size = k_cache.shape[2]
    out = torch.empty_like(q)
    for i in range(batch.num_seqs):
        start, n, ctx = batch.q_starts[i], batch.q_lens[i], batch.context_lens[i]
        table = batch.block_tables[i, :-(-ctx // block_size)]
        k_pos = torch.arange(ctx, device=q.device)
        visible = k_pos > ctx - n - (window or ctx + 1)  # only keys someone can still see
        k = _gather_blocks(k_cache, table)[:, :ctx][:, visible].transpose(0, 1)  # (T, Hkv, D)
        v = _gather_blocks(v_cache, table)[:, :ctx][:, visible].transpose(0, 1)
        q_pos = torch.arange(ctx - n, ctx, device=q.device)
        out[start:start + n] = attention(q[None, start:start + n], k[None], v[None],
                                         q_pos[None], k_pos[visible][None], window)[0]
    return out


class _OnlineSoftmax:
    """Running max m, normaliser l and accumulator acc of softmax(scores) @ values, one row
    per query (and head). Per key tile: `shift = rescale(tile_max)`, then
    `add(p.sum(), p @ v)` with p = exp(scores - shift)."""

    def __init__(self, shape: tuple[int, ...], dim: int, device: torch.device):
        self.m = torch.full(shape, float("-inf"), device=device)
        self.l = torch.zeros(shape, device=device)
        self.acc = torch.zeros(*shape, dim, device=device)

    def rescale(self, tile_max: torch.Tensor) -> torch.Tensor:
        """Raise the running max to cover the new tile; returns the shift for its exp."""
        m_new = torch.maximum(self.m, tile_max)
        # Rows that have seen only masked keys keep m = -inf; shift by 0 there to avoid NaN.
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        scale = torch.exp(self.m - shift)
        self.l = self.l * scale
        self.acc = self.acc * scale[..., None]
        self.m = m_new
        return shift

    def add(self, p_sum: torch.Tensor, pv: torch.Tensor) -> None:
        self.l = self.l + p_sum
        self.acc = self.acc + pv

    def result(self) -> torch.Tensor:
        return self.acc / self.l[..., None]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    batch: PagedBatch, window: int | None, tile: int = 512,
                    decode_tile: int = 1024, k_new: torch.Tensor | None = None,
                    v_new: torch.Tensor | None = None, compiled: bool = True) -> torch.Tensor:
    """Tiled online-softmax attention over the paged cache. q (N, Hq, D) -> (N, Hq, D).

    `tile` is the query and key tile of prefills, `decode_tile` the key tile of decodes (in
    tokens, rounded to whole blocks). Given this step's own keys/values `k_new`/`v_new`
    (N, Hkv, D), a sequence with no earlier context and no window takes SDPA's causal flash
    kernel instead (also free of a T x T matrix, and faster). `compiled=False` keeps decodes
    on the PyTorch tiled path even where the C++ kernel is available."""
    out = torch.empty_like(q)
    decode = [i for i in range(batch.num_seqs) if batch.q_lens[i] == 1]
    if decode and not (compiled and _decode_compiled(q, k_cache, v_cache, batch, decode,
                                                      window, out)):
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


_WORKSPACE: dict[tuple, torch.Tensor] = {}


def _workspace(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer: gathering into fresh 100 MB tensors every layer costs more in
    page faults than the copy itself."""
    key = (name, like.dtype, like.device)
    numel = math.prod(shape)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # usable both inside and outside inference mode
            buf = _WORKSPACE[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


@dataclass
class _DecodeTile:
    rows: torch.Tensor  # row ids into the cache viewed as (Hkv * num_blocks, bs * D)
    visible: torch.Tensor  # (S, L) which gathered keys each query may see
    num_cols: int  # block-table columns in this tile


def _decode_plan(batch: PagedBatch, seqs: list[int], k_cache: torch.Tensor,
                 window: int | None, tile: int) -> tuple[torch.Tensor, list[_DecodeTile]]:
    """Query rows and key tiles of the decoding sequences. Every layer of a step gathers
    the same tiles, so they are worked out once per step (cached on the batch)."""
    key = ("decode", window, tile)
    if key in batch.plans:
        return batch.plans[key]
    Hkv, num_blocks, bs, _ = k_cache.shape
    dev = k_cache.device
    idx = torch.tensor([batch.q_starts[i] for i in seqs], device=dev)
    q_pos = torch.tensor([batch.context_lens[i] for i in seqs], device=dev) - 1
    tables = batch.block_tables[torch.tensor(seqs, device=dev)].clamp(min=0)
    head_base = torch.arange(Hkv, device=dev)[:, None] * num_blocks
    end = max(batch.context_lens[i] for i in seqs)
    lo = 0 if window is None else max(0, min(batch.context_lens[i] for i in seqs) - window)
    cols = max(1, tile // bs)  # block-table columns per tile
    tiles = []
    for c0 in range(lo // bs, -(-end // bs), cols):
        c1 = min(c0 + cols, -(-end // bs))
        k_pos = torch.arange(c0 * bs, c1 * bs, device=dev)
        visible = k_pos[None, :] <= q_pos[:, None]
        if window is not None:
            visible &= k_pos[None, :] > (q_pos - window)[:, None]
        rows = (head_base + tables[:, c0:c1].reshape(1, -1)).view(-1)
        tiles.append(_DecodeTile(rows, visible, c1 - c0))
    batch.plans[key] = idx, tiles
    return idx, tiles


def _decode_compiled(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     batch: PagedBatch, seqs: list[int], window: int | None,
                     out: torch.Tensor) -> bool:
    """Decodes through the C++ kernel; False where it cannot run (then nothing is written)."""
    if ("compiled", len(seqs)) not in batch.plans:
        dev = q.device
        everyone = len(seqs) == q.shape[0]  # a pure decode step: no gather, no scatter
        idx = None if everyone else torch.tensor([batch.q_starts[i] for i in seqs], device=dev)
        tables = batch.block_tables[torch.tensor(seqs, device=dev)].contiguous()
        ctx = torch.tensor([batch.context_lens[i] for i in seqs], device=dev)
        batch.plans["compiled", len(seqs)] = idx, tables, ctx
    idx, tables, ctx = batch.plans["compiled", len(seqs)]
    res = cpu.paged_decode(q if idx is None else q[idx], k_cache, v_cache, tables, ctx, window)
    if res is None:
        return False
    if idx is None:
        out.copy_(res)
    else:
        out[idx] = res
    return True


def _decode_tiled(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  batch: PagedBatch, seqs: list[int], window: int | None, out: torch.Tensor,
                  tile: int) -> None:
    """One query per sequence; all of them walk their blocks together, a tile of block-table
    columns at a time, gathered into a reusable workspace as (Hkv, S, tokens, D) so each
    (head, sequence) pair is one plain matrix for the batched matmuls."""
    Hkv, _, bs, D = k_cache.shape
    S, Hq = len(seqs), q.shape[1]
    G = Hq // Hkv
    idx, tiles = _decode_plan(batch, seqs, k_cache, window, tile)
    qs = (q[idx].float() * D ** -0.5).view(S, Hkv, G, D).transpose(0, 1)  # (Hkv, S, G, D)
    k_rows, v_rows = k_cache.view(-1, bs * D), v_cache.view(-1, bs * D)
    state = _OnlineSoftmax((Hkv, S, G), D, q.device)
    for t in tiles:
        L = t.num_cols * bs
        shape = (t.rows.numel(), bs * D)
        k = torch.index_select(k_rows, 0, t.rows, out=_workspace("k", shape, k_cache))
        v = torch.index_select(v_rows, 0, t.rows, out=_workspace("v", shape, v_cache))
        k, v = k.view(Hkv, S, L, D).float(), v.view(Hkv, S, L, D).float()
        scores = (qs @ k.transpose(-1, -2)).masked_fill(~t.visible[None, :, None, :],
                                                        float("-inf"))  # (Hkv, S, G, L)
        p = torch.exp(scores - state.rescale(scores.amax(-1))[..., None])
        state.add(p.sum(-1), p @ v)
    out[idx] = state.result().transpose(0, 1).reshape(S, Hq, D).to(out.dtype)


def _prefill_tiled(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   batch: PagedBatch, i: int, window: int | None, out: torch.Tensor,
                   tile: int) -> None:
    """Queries of one sequence in tiles; each query tile visits only the key tiles (whole
    blocks) its causal window can see."""
    dev, bs = q.device, k_cache.shape[2]
    Hq, D, Hkv = q.shape[1], q.shape[2], k_cache.shape[0]
    G = Hq // Hkv
    start, n, ctx = batch.q_starts[i], batch.q_lens[i], batch.context_lens[i]
    table = batch.block_tables[i]
    first_pos = ctx - n
    cols = max(1, tile // bs)
    for q0 in range(0, n, tile):
        q1 = min(q0 + tile, n)
        q_pos = torch.arange(first_pos + q0, first_pos + q1, device=dev)  # (tq,)
        tq = q1 - q0
        # (Hkv, G * tq, D): the queries of each kv head's group stacked together.
        qs = (q[start + q0:start + q1].float() * D ** -0.5).view(tq, Hkv, G, D)
        qs = qs.permute(1, 2, 0, 3).reshape(Hkv, G * tq, D)
        k_lo = 0 if window is None else max(0, first_pos + q0 - window + 1)
        last_block = -(-(first_pos + q1) // bs)
        state = _OnlineSoftmax((Hkv, G * tq), D, dev)
        for c0 in range(k_lo // bs, last_block, cols):
            c1 = min(c0 + cols, last_block)
            k_pos = torch.arange(c0 * bs, c1 * bs, device=dev)  # (tk,)
            visible = k_pos[None, :] <= q_pos[:, None]  # (tq, tk)
            if window is not None:
                visible &= k_pos[None, :] > q_pos[:, None] - window
            k = _gather_blocks(k_cache, table[c0:c1]).float()  # (Hkv, tk, D)
            v = _gather_blocks(v_cache, table[c0:c1]).float()
            scores = (qs @ k.transpose(1, 2)).view(Hkv, G, tq, -1)
            scores = scores.masked_fill(~visible, float("-inf")).view(Hkv, G * tq, -1)
            p = torch.exp(scores - state.rescale(scores.amax(-1))[..., None])
            state.add(p.sum(-1), p @ v)
        res = state.result().view(Hkv, G, tq, D).permute(2, 0, 1, 3).reshape(tq, Hq, D)
        out[start + q0:start + q1] = res.to(out.dtype)
