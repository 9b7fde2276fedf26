"""`ModelRunner`: owns the paged KV cache and runs one forward per engine step.

The step's sequences are flattened into one row of tokens (B = 1, T = all scheduled
tokens) with their positions; `PagedKVCache` carries the slot of every token and the block
tables into the model's attention layers. Only the rows that need logits go through the LM
head: the last token of every sequence that samples, and the prompt positions of those that
asked for prompt logprobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmsys.engine.sampler import top_logprobs
from llmsys.engine.scheduler import ScheduledSeq
from llmsys.kernels.attention import PagedBatch, paged_attention, write_kv
from llmsys.model.transformer import Transformer
from llmsys.outputs import PositionLogprobs


class PagedKVCache:
    """The `kv_cache` the model sees during one step: stores new keys/values at their
    slots, then attends over each sequence's blocks."""

    def __init__(self, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor],
                 slot_blocks: torch.Tensor, slot_offsets: torch.Tensor, batch: PagedBatch):
        self.k_caches, self.v_caches = k_caches, v_caches
        self.slot_blocks, self.slot_offsets, self.batch = slot_blocks, slot_offsets, batch

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor, window: int | None) -> torch.Tensor:
        kc, vc = self.k_caches[layer], self.v_caches[layer]  # (Hkv, blocks, block_size, D)
        k, v = k[0], v[0]  # (N, Hkv, D)
        write_kv(kc, vc, k, v, self.slot_blocks, self.slot_offsets)
        return paged_attention(q[0], kc, vc, self.batch, window, k_new=k, v_new=v)[None]


@dataclass
class StepResult:
    logits: torch.Tensor  # (S, V) float32, one row per sampling sequence, in batch order
    prompt_logprobs: dict[int, list[PositionLogprobs]]  # id(seq) -> entries computed now


class ModelRunner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int,
                 decode_token: Callable[[int], str]):
        cfg = model.config
        param = model.embed_tokens.weight
        shape = (cfg.num_kv_heads, num_blocks, block_size, cfg.head_dim)
        self.k_caches = [torch.zeros(shape, dtype=param.dtype, device=param.device)
                         for _ in range(cfg.num_layers)]
        self.v_caches = [torch.zeros_like(k) for k in self.k_caches]
        self.model, self.block_size, self.device = model, block_size, param.device
        self.decode_token = decode_token

    @staticmethod
    def kv_bytes_per_block(model: Transformer, block_size: int) -> int:
        cfg = model.config
        item = model.embed_tokens.weight.element_size()
        return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * item

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> StepResult:
        # 1. Flatten the batch: token ids, positions, cache slots, per-sequence spans.
        ids, positions, blocks, q_starts, q_lens, ctx_lens = [], [], [], [], [], []
        bs = self.block_size
        for item in batch:
            seq, n = item.seq, item.num_tokens
            start = seq.num_computed_tokens
            q_starts.append(len(ids))
            ids += seq.token_ids[start:start + n]
            positions += range(start, start + n)
            blocks += [seq.block_table[p // bs] for p in range(start, start + n)]
            q_lens.append(n)
            ctx_lens.append(start + n)
        width = max(len(item.seq.block_table) for item in batch)
        tables = torch.tensor([item.seq.block_table + [-1] * (width - len(item.seq.block_table))
                               for item in batch], dtype=torch.long, device=self.device)
        paged = PagedBatch(q_starts, q_lens, ctx_lens, tables)
        dev = self.device
        pos = torch.tensor(positions, device=dev)
        cache = PagedKVCache(self.k_caches, self.v_caches,
                             torch.tensor(blocks, dtype=torch.long, device=dev), pos % bs, paged)
        # 2. One forward over all tokens.
        hidden = self.model.hidden_states(torch.tensor([ids], device=dev), pos[None], cache)[0]
        # 3. Logits only where needed.
        rows = [q_starts[i] + q_lens[i] - 1 for i, item in enumerate(batch) if item.samples]
        logits = self.model.logits(hidden[rows]).float()
        prompt_lps = {id(item.seq): self._prompt_logprobs(hidden, item, q_starts[i])
                      for i, item in enumerate(batch) if item.seq.wants_prompt_logprobs}
        return StepResult(logits, prompt_lps)

    def _prompt_logprobs(self, hidden: torch.Tensor, item: ScheduledSeq,
                         q_start: int) -> list[PositionLogprobs]:
        """Entries for the prompt positions this chunk predicts (p + 1 < num_prompt)."""
        seq, start = item.seq, item.seq.num_computed_tokens
        end = min(start + item.num_tokens, seq.num_prompt_tokens - 1)
        # Position p's logits predict token p + 1; skip the ones already collected.
        first = max(start, len(seq.prompt_logprobs) - 1)
        if end <= first:
            return []
        h = hidden[q_start + first - start:q_start + end - start]
        lp = torch.log_softmax(self.model.logits(h).float(), -1)
        targets = torch.tensor(seq.token_ids[first + 1:end + 1], device=self.device)
        return top_logprobs(lp, targets, seq.params.prompt_logprobs, self.decode_token)
