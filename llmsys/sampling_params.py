"""`SamplingParams`: how one request is decoded (vLLM's names and meanings)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """temperature 0 is exact argmax; top_k 0 or -1 keeps all tokens; top_p 1 and min_p 0 are off.

    `stop` strings end generation and are not included in the text; `stop_token_ids` end it
    like EOS does. `logprobs=k` returns the top-k log-probabilities (plus the chosen token's)
    of each generated position, `prompt_logprobs=k` those of each prompt position (None for
    the first). Log-probabilities are of the model's raw distribution, before temperature
    and truncation, as in vLLM."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (_is_int(self.n) and self.n >= 1, "n", self.n, "an integer >= 1"),
            (_is_num(self.temperature) and self.temperature >= 0, "temperature",
             self.temperature, "a number >= 0 (0 means greedy)"),
            (_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]"),
            (_is_int(self.top_k) and self.top_k >= 0, "top_k", self.top_k,
             "an integer >= 1, or 0 / -1 to disable"),
            (_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]"),
            (self.seed is None or _is_int(self.seed), "seed", self.seed, "an integer or None"),
            (self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
             "max_tokens", self.max_tokens, "an integer >= 1 or None"),
            (_is_int(self.min_tokens) and self.min_tokens >= 0
             and (self.max_tokens is None or self.min_tokens <= self.max_tokens),
             "min_tokens", self.min_tokens, "an integer in [0, max_tokens]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", self.stop,
             "a list of non-empty strings"),
            (all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
             self.stop_token_ids, "a list of token ids >= 0"),
            (self.logprobs is None or (_is_int(self.logprobs) and self.logprobs >= 0),
             "logprobs", self.logprobs, "an integer >= 0 or None"),
            (self.prompt_logprobs is None
             or (_is_int(self.prompt_logprobs) and self.prompt_logprobs >= 0),
             "prompt_logprobs", self.prompt_logprobs, "an integer >= 0 or None"),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x  # rejects NaN
