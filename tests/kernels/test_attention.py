"""Tiled paged attention equals the SDPA reference (float32, 1e-5) over random shapes:
GQA ratios, sliding windows, chunk boundaries, block sizes, tile sizes, freed blocks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.kernels.attention import (
    PagedBatch,
    attention,
    paged_attention,
    paged_attention_reference,
)


@st.composite
def paged_problems(draw):
    block_size = draw(st.sampled_from([1, 2, 3, 4, 16]))
    kv_heads = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([4, 8]))
    window = draw(st.one_of(st.none(), st.integers(1, 40)))
    num_seqs = draw(st.integers(1, 4))
    contexts = [draw(st.integers(1, 70)) for _ in range(num_seqs)]
    q_lens = [draw(st.sampled_from([1, c, max(1, c // 2), min(c, 5)])) for c in contexts]
    tile = draw(st.sampled_from([2, 5, 16, 256]))
    decode_tile = draw(st.sampled_from([3, 16, 1024]))
    seed = draw(st.integers(0, 2**16))
    return (block_size, kv_heads, group, head_dim, window, contexts, q_lens, tile,
            decode_tile, seed)


def _build(block_size, kv_heads, group, head_dim, window, contexts, q_lens, seed):
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-c // block_size) for c in contexts]
    num_blocks = sum(blocks_per_seq) + 2
    order = torch.randperm(num_blocks, generator=g).tolist()  # scattered, not contiguous
    tables = torch.full((len(contexts), max(blocks_per_seq)), -1, dtype=torch.long)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = torch.tensor(order[used:used + n])
        used += n
        if window is not None:  # blocks no query can see may already have been freed
            first_visible = contexts[i] - q_lens[i] - window + 1
            tables[i, :max(0, first_visible) // block_size] = -1
    k_cache = torch.randn(kv_heads, num_blocks, block_size, head_dim, generator=g)
    v_cache = torch.randn(kv_heads, num_blocks, block_size, head_dim, generator=g)
    q = torch.randn(sum(q_lens), kv_heads * group, head_dim, generator=g)
    starts = [sum(q_lens[:i]) for i in range(len(q_lens))]
    return q, k_cache, v_cache, PagedBatch(starts, q_lens, contexts, tables)


@settings(max_examples=150, deadline=None)
@given(paged_problems())
def test_tiled_paged_attention_matches_reference(problem):
    (block_size, kv_heads, group, head_dim, window, contexts, q_lens, tile, decode_tile,
     seed) = problem
    q, k_cache, v_cache, batch = _build(block_size, kv_heads, group, head_dim, window,
                                        contexts, q_lens, seed)
    ref = paged_attention_reference(q, k_cache, v_cache, batch, window)
    got = paged_attention(q, k_cache, v_cache, batch, window, tile=tile,
                          decode_tile=decode_tile)
    assert (ref - got).abs().max().item() < 1e-5


def test_reference_matches_plain_causal_sdpa():
    """The reference itself, on one contiguous sequence, equals textbook causal attention."""
    g = torch.Generator().manual_seed(0)
    T, H, D = 33, 4, 8
    q, k, v = (torch.randn(T, H, D, generator=g) for _ in range(3))
    scores = torch.einsum("qhd,khd->hqk", q, k) / D ** 0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    textbook = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    table = torch.arange(T)[None]  # block size 1, blocks in order
    batch = PagedBatch([0], [T], [T], table)
    k_cache = k.transpose(0, 1)[:, :, None].contiguous()  # (H, T blocks of 1 token, 1, D)
    v_cache = v.transpose(0, 1)[:, :, None].contiguous()
    ref = paged_attention_reference(q, k_cache, v_cache, batch, None)
    assert (ref - textbook).abs().max().item() < 1e-5
    fresh = attention(q[None], k[None], v[None], torch.arange(T)[None], None, None)[0]
    assert (fresh - textbook).abs().max().item() < 1e-5


def test_fresh_prefill_fast_path_matches_tiled():
    g = torch.Generator().manual_seed(1)
    T, Hkv, G, D, bs = 40, 2, 2, 8, 4
    k_new, v_new = torch.randn(T, Hkv, D, generator=g), torch.randn(T, Hkv, D, generator=g)
    q = torch.randn(T, Hkv * G, D, generator=g)
    k_cache = k_new.transpose(0, 1).reshape(Hkv, T // bs, bs, D).contiguous()
    v_cache = v_new.transpose(0, 1).reshape(Hkv, T // bs, bs, D).contiguous()
    batch = PagedBatch([0], [T], [T], torch.arange(T // bs)[None])
    fast = paged_attention(q, k_cache, v_cache, batch, None, k_new=k_new, v_new=v_new)
    tiled = paged_attention(q, k_cache, v_cache, batch, None, tile=8)
    assert (fast - tiled).abs().max().item() < 1e-5
