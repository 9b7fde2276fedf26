"""`SamplingParams`: how one request is decoded (vLLM's names and meanings), and
`StructuredOutputsParams`: the grammar its output must follow (see docs/structured_outputs.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class StructuredOutputsParams:
    """Constrain the output to exactly one of: a JSON schema (`json`, a dict or its JSON
    text), a regular expression (`regex`, Rust regex syntax), one of several strings
    (`choice`), a grammar (`grammar`, Lark or GBNF text), or any JSON object (`json_object`).
    The schema / regex / grammar itself is compiled, and rejected if invalid, when the
    request is added to the engine."""

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        chosen = [name for name in ("json", "regex", "choice", "grammar")
                  if getattr(self, name) is not None]
        if not isinstance(self.json_object, bool):
            raise ValueError(f"json_object={self.json_object!r} is invalid: must be a bool")
        chosen += ["json_object"] if self.json_object else []
        if len(chosen) != 1:
            raise ValueError(f"structured outputs take exactly one of json, regex, choice, "
                             f"grammar, json_object; got {chosen or 'none'}")
        if self.json is not None:
            self.json = _parse_schema(self.json)
        if self.regex is not None and not (isinstance(self.regex, str) and self.regex):
            raise ValueError(f"regex={self.regex!r} is invalid: must be a non-empty string")
        if self.grammar is not None and not (isinstance(self.grammar, str)
                                             and self.grammar.strip()):
            raise ValueError(f"grammar={self.grammar!r} is invalid: must be a non-empty "
                             f"string (Lark or GBNF)")
        if self.choice is not None:
            if isinstance(self.choice, tuple):
                self.choice = list(self.choice)
            if not (isinstance(self.choice, list) and self.choice
                    and all(isinstance(c, str) and c for c in self.choice)):
                raise ValueError(f"choice={self.choice!r} is invalid: must be a non-empty "
                                 f"list of non-empty strings")


def _parse_schema(schema: object) -> dict:
    """A JSON schema given as a dict or as JSON text -> the dict."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json={_short(schema)} is invalid: the string is not valid "
                             f"JSON ({exc}); must be a JSON schema object") from None
    if not isinstance(schema, dict):
        raise ValueError(f"json={_short(schema)} is invalid: must be a JSON schema object "
                         f"(a dict or its JSON text)")
    return schema


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class SamplingParams:
    """temperature 0 is exact argmax; top_k 0 or -1 keeps all tokens; top_p 1 and min_p 0 are off.

    `stop` strings end generation and are not included in the text; `stop_token_ids` end it
    like EOS does. `logprobs=k` returns the top-k log-probabilities (plus the chosen token's)
    of each generated position, `prompt_logprobs=k` those of each prompt position (None for
    the first). Log-probabilities are of the model's raw distribution, before temperature
    and truncation (and before a grammar's mask), as in vLLM. `structured_outputs` constrains
    the output to a JSON schema, regex, choice or grammar; the output ends ("stop") as soon
    as the grammar is complete."""

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
    structured_outputs: StructuredOutputsParams | None = None

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
        so = self.structured_outputs
        if so is not None and not isinstance(so, StructuredOutputsParams):
            raise ValueError(f"structured_outputs={so!r} is invalid: must be a "
                             f"StructuredOutputsParams or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x  # rejects NaN
