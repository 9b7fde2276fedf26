"""`Sequence`: one completion being generated, and what the engine tracks about it.

A request with `n` samples becomes `n` sequences sharing the prompt. `token_ids` holds
prompt + output; `num_computed_tokens` counts the leading tokens whose keys and values are
in the KV cache (the scheduler's progress marker); `block_table` lists the cache blocks that
hold them, in position order (-1 for blocks freed because they left a sliding window).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch

from llmsys.engine.output_text import OutputText
from llmsys.outputs import PositionLogprobs
from llmsys.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llmsys.engine.grammar import GrammarMatcher


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, index: int, prompt_token_ids: list[int],
                 params: SamplingParams, text: OutputText, generator: torch.Generator,
                 max_tokens: int):
        self.request_id, self.index, self.params = request_id, index, params
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.max_tokens = max_tokens  # already capped by the context length
        self.text, self.generator = text, generator
        self.status = Status.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of the full blocks so far
        self.logprobs: list[PositionLogprobs] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0  # of the sampled tokens, kept as they come
        self.prompt_logprobs: list[PositionLogprobs | None] | None = (
            [None] if params.prompt_logprobs is not None else None)
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        # Structured outputs: where the output stands in its grammar. It has seen every
        # output token, so a preempted sequence (tokens kept, cache recomputed) goes on as is.
        self.grammar: GrammarMatcher | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Still collecting prompt logprobs (they are not recollected after a preemption)."""
        pending = self.prompt_logprobs is not None
        return pending and len(self.prompt_logprobs) < self.num_prompt_tokens
