"""`Scheduler`: decides which sequences run in the next step, and how many tokens each.

One token budget per step (`max_num_batched_tokens`). Running sequences go first, decodes
(one token each) before unfinished prefills, then waiting sequences are admitted in arrival
order while the budget, `max_num_seqs` and free blocks allow; a prefill that does not fit the
budget is chunked. When a running sequence needs a block and none is free, the most recently
admitted other running sequence is preempted: its blocks are freed and it goes back to the
front of the waiting queue, to be recomputed from its tokens later (same tokens, same
generator, so the same result).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from llmsys.engine.block_manager import BlockManager
from llmsys.engine.sequence import Sequence, Status


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # computed this step, starting at seq.num_computed_tokens

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence's tokens (so a token is sampled)."""
        return self.seq.num_computed_tokens + self.num_tokens == len(self.seq)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int, window: int | None):
        self.blocks = block_manager
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.window = window  # when every layer has one: blocks outside it are freed
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_num_batched_tokens
        batch: list[ScheduledSeq] = []
        # 1. Running sequences: decodes first, then prefills that were chunked.
        decodes = [s for s in self.running if s.num_uncomputed_tokens == 1]
        prefills = [s for s in self.running if s.num_uncomputed_tokens > 1]
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            if self._make_room(seq, n, batch):
                self.blocks.allocate(seq, n)
                batch.append(ScheduledSeq(seq, n))
                budget -= n
        # 2. Waiting sequences, oldest first, while there is room.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if (self.blocks.enable_prefix_caching and not seq.block_table
                    and not seq.wants_prompt_logprobs):
                self.blocks.match_prefix(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            self._free_outside_window(seq)
            if not self.blocks.can_allocate(seq, n):
                # Only running sequences hold blocks: give the prefix back until admitted.
                self.blocks.free_sequence(seq)
                seq.num_computed_tokens = 0
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            self.blocks.allocate(seq, n)
            batch.append(ScheduledSeq(seq, n))
            budget -= n
        return batch

    def _free_outside_window(self, seq: Sequence) -> None:
        if self.window is not None:
            self.blocks.free_outside_window(seq, self.window)

    def _make_room(self, seq: Sequence, n: int, batch: list[ScheduledSeq]) -> bool:
        """Free blocks for `seq` by preempting others (newest first); False if `seq` itself
        had to be preempted."""
        self._free_outside_window(seq)
        scheduled = {id(s.seq) for s in batch}
        while not self.blocks.can_allocate(seq, n):
            victims = [s for s in self.running if s is not seq and id(s) not in scheduled]
            victim = victims[-1] if victims else seq
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        self.blocks.free_sequence(seq)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence wherever it is and free its blocks."""
        self.blocks.free_sequence(seq)
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
