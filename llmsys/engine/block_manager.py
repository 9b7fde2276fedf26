"""`BlockManager`: the KV cache as fixed-size blocks, with reference counts and a prefix cache.

Every block is in exactly one state:
  - in use: reference count > 0, listed in the block tables of that many sequences;
  - free: count 0, no content worth keeping (`free` queue);
  - cached: count 0 but full and hashed, kept for prefix hits until evicted in LRU order
    (`cached` ordered dict, oldest first).
A full block's hash chains the previous block's hash with the block's token ids, so equal
hashes mean equal prefixes; the tokens are kept too and compared on a hit.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from llmsys.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))
        self.cached: OrderedDict[int, None] = OrderedDict()
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free) + len(self.cached)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give `seq` the blocks to hold `num_new_tokens` more tokens."""
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._take_block())

    def _take_block(self) -> int:
        if self.free:
            block = self.free.popleft()
        else:  # evict the least recently used cached block
            block, _ = self.cached.popitem(last=False)
            del self.hash_to_block[self.block_hash[block]]
            self.block_hash[block] = self.block_tokens[block] = None
        assert self.ref_counts[block] == 0
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0
        if self.ref_counts[block] == 0:
            if self.block_hash[block] is None:
                self.free.append(block)
            else:
                self.cached[block] = None  # most recently used end

    def free_sequence(self, seq: Sequence) -> None:
        """Drop all of `seq`'s blocks (the tail first, so it is evicted first)."""
        for block in reversed(seq.block_table):
            if block >= 0:
                self._release(block)
        seq.block_table.clear()
        seq.block_hashes.clear()

    def free_outside_window(self, seq: Sequence, window: int) -> None:
        """Free the blocks no future query of `seq` can see: all keys before position
        num_computed_tokens - window + 1. Their table entries become -1."""
        first_visible = seq.num_computed_tokens - window + 1
        for i in range(max(0, first_visible) // self.block_size):
            if seq.block_table[i] >= 0:
                self._release(seq.block_table[i])
                seq.block_table[i] = -1

    def _chain_hash(self, parent: int | None, tokens: tuple[int, ...]) -> int:
        return hash((parent, tokens))

    def match_prefix(self, seq: Sequence) -> None:
        """Before `seq` first runs: share the cached blocks that hold a prefix of its tokens.
        At least one token is always left to compute (its logits start the generation)."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        bs = self.block_size
        self.prefix_queries += len(seq)
        parent = None
        for i in range((len(seq) - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = self._chain_hash(parent, tokens)
            block = self.hash_to_block.get(h)
            if block is None or self.block_tokens[block] != tokens:
                break
            if self.ref_counts[block] == 0:
                del self.cached[block]
            self.ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed_tokens = len(seq.block_table) * bs
        self.prefix_hits += seq.num_computed_tokens

    def commit(self, seq: Sequence) -> None:
        """After a forward: hash the blocks that became full and offer them to the cache."""
        bs = self.block_size
        while len(seq.block_hashes) < seq.num_computed_tokens // bs:
            i = len(seq.block_hashes)
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = self._chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, tokens)
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if (self.enable_prefix_caching and block >= 0 and h not in self.hash_to_block
                    and self.block_hash[block] is None):
                self.block_hash[block], self.block_tokens[block] = h, tokens
                self.hash_to_block[h] = block

    def check_invariants(self, live: list[Sequence]) -> None:
        """Every block is free, cached, or referenced by exactly the tables that hold it."""
        expected = [0] * self.num_blocks
        for seq in live:
            for block in seq.block_table:
                if block >= 0:
                    expected[block] += 1
        assert expected == self.ref_counts, "reference counts disagree with block tables"
        free, cached = set(self.free), set(self.cached)
        assert len(free) == len(self.free) and not free & cached
        for block in range(self.num_blocks):
            idle = self.ref_counts[block] == 0
            assert idle == (block in free or block in cached), f"block {block} misfiled"
            assert (block in cached) <= (self.block_hash[block] is not None)
            assert (block in free) <= (self.block_hash[block] is None)
        for h, block in self.hash_to_block.items():
            assert self.block_hash[block] == h
        assert len(self.hash_to_block) == sum(h is not None for h in self.block_hash)
