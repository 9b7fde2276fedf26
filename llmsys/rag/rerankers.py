"""Rerankers that ask a model: an LLM judge over any chat endpoint and a local cross-encoder.

    from llmsys.agent.chat_model import ChatModel
    from llmsys.rag.rerankers import CrossEncoderReranker, LLMJudgeReranker

    hits = retriever.search(query, k=30)
    judge = LLMJudgeReranker(ChatModel("http://127.0.0.1:8000/v1", "qwen2.5-7b-instruct"),
                             batch_size=10, max_passage_chars=1000)
    top = judge.rerank(query, hits, k=10)             # -> [Hit, ...], scores in [0, 1]
    judge.usage, judge.stats                          # tokens and calls; judged / unjudged
    cross = CrossEncoderReranker("models/ms-marco-MiniLM-L-6-v2", batch_size=32)
    top = cross.rerank(query, hits, k=10)             # scores are the model's logits

Both have the interface of `retrieval.MaxSimReranker`: `scores(query, hits)` (one float per
hit, in input order) and `rerank(query, hits, k)` (the top k, best first, each hit with its
new score), plus `first_stage_weight` w in [0, 1] to blend in the first-stage scores.

`LLMJudgeReranker(model, ...)` grades passages POINTWISE, several per request: the prompt
lists the query and up to `batch_size` passages as "[1] text", "[2] text", ... (white space
collapsed, each cut to `max_passage_chars` characters, "..." marking a cut) and asks for one
line "[i] grade" per passage, grade 0 (irrelevant) to 10 (fully answers the query). Pointwise
rather than listwise (a permutation "[3] > [1] > [2]" over a sliding window) because:
each grade stands alone, so a reply that is partly garbled loses only the grades it garbles,
where a broken permutation leaves a whole window unordered; the requests are independent
(ceil(n / batch_size) of them, none waiting for the order another produced, as the passes of
a sliding window must); and grades are absolute, so they can be blended with first-stage
scores. The price: coarse grades tie often (ties keep the first-stage order) and the model
never compares passages of different batches.

Replies are parsed line by line (lines also split at "," and ";"). Accepted: "[2] 7", "2 -> 7",
"2: 7", "2 - 7", "2. 7", "Passage 2: 7/10", "[2] grade: 7.5", JSON such as {"2": 7}, with
bullets or bold around them; anything else is ignored. A grade outside [0, 10], a passage
number outside the batch, or a passage given two different grades makes that passage
unjudged, as does a missing line, a reply without text, or (with `on_error="fallback"`) a
failed request; with `on_error="raise"` (the default) a failed request raises `ModelError`.

Ordering: judged hits score (1 - w) * grade / 10 + w * (min-max normalised first-stage
score), sorted best first (ties by first-stage position). Unjudged hits keep their
first-stage positions and the judged hits fill the other positions in score order; an
unjudged hit takes the score of the hit just above it (the best judged score at the top),
so scores never increase down the list. When nothing was judged the hits come back as
given, first-stage scores included. The result is always a permutation of the input: no
hit is lost or duplicated. `grades(query, hits)` gives the parsed grades (None =
unjudged). `usage` (a `chat_model.Usage`: prompt and completion tokens, calls) and `stats`
(requests, failed requests, judged and unjudged passages) add up over calls.

`CrossEncoderReranker(model_dir, batch_size, max_length, device)`: a sequence-classification
model with one output (its logit is the relevance score) loaded from a local directory
(config.json, weights, tokenizer files) with `transformers`, offline, on first use. The
directory is checked when the reranker is made (config.json, weights and tokenizer files
must be there); a model with more than one output, or a tokenizer without a vocabulary, is
refused when loaded. Pairs (query, passage) are tokenized together, truncated to
`max_length` tokens (or the tokenizer's own limit if smaller; the longer of query and
passage is cut first) and scored in padded batches of `batch_size`. The order is
`retrieval.rescored`'s, as for `MaxSimReranker`: by logit (ties by chunk id), or with
w > 0 the weighted fusion of the logit ranking (weight 1 - w) and the first-stage one
(weight w).

Limits: the judge sends its requests one after the other and is not thread-safe (its
counters); passage text goes into the prompt as is, so a passage can try to steer the judge
(prompt injection). The cross-encoder runs in float32 on one device; models that need
custom code (`trust_remote_code`) are not supported.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmsys.agent.chat_model import ModelError, Usage
from llmsys.rag.checks import check_int
from llmsys.rag.retrieval import rescored
from llmsys.rag.store import Hit

if TYPE_CHECKING:
    from llmsys.agent.chat_model import ChatModel

__all__ = ["CrossEncoderReranker", "JudgeStats", "LLMJudgeReranker", "judge_messages",
           "parse_grades"]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "fallback"]
ON_ERROR = ("raise", "fallback")
RAG_EXTRA = "pip install 'llmsys[rag]'"
MAX_GRADE = 10.0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")

JUDGE_SYSTEM = (
    "You are a search relevance judge. For every passage, grade how well it answers the "
    "query, from 0 (irrelevant) to 10 (fully answers it). Reply with exactly one line per "
    "passage in the form [number] grade, for example:\n[1] 7\n[2] 0\nWrite nothing else.")


# ----------------------------------------------------------------------------- checks



def _check_weight(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"first_stage_weight must be a number in [0, 1], got {value!r}")


def _check_inputs(query: object, hits: Sequence[Hit]) -> None:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    for hit in hits:
        if not isinstance(hit, Hit):
            raise TypeError(f"hits must be Hit objects, got {type(hit).__name__}")


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    return [(v - low) / (high - low) for v in values]


# ----------------------------------------------------------------------------- prompt, parse

def _passage(text: str, max_chars: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[:max_chars].rstrip() + " ..."


def judge_messages(query: str, texts: Sequence[str], max_passage_chars: int) -> list[dict]:
    """The chat messages asking for one grade per passage (passages numbered from 1)."""
    passages = "\n".join(f"[{i}] {_passage(t, max_passage_chars)}"
                         for i, t in enumerate(texts, start=1))
    user = (f"Query: {' '.join(query.split())}\n\nPassages:\n{passages}\n\n"
            f"Grade all {len(texts)} passages, one line each.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_GRADE = re.compile(r"""
    ^[\s>*•{"'-]*                                   # bullets, bold, quotes, a JSON brace
    (?:(?:passage|document|doc|id)\s*)?\#?\s*
    [\[(]?\s*(\d+)\s*[\])*"']*                      # the passage number
    \s*(?:(?:->|=>|[:=–—])\s*|[-.]\s+|\s+)           # a separator ("-7" is negative)
    (?:(?:grade|score|relevance)\s*[:=]?\s*)?
    (-?\d+(?:\.\d+)?)                               # the grade
    """, re.IGNORECASE | re.VERBOSE)


def parse_grades(text: str, n: int) -> list[float | None]:
    """Grades of passages 1..n read from a judge's reply (None where none could be read)."""
    found: dict[int, set[float]] = {}
    for piece in re.split(r"[\n,;]", text):
        match = _GRADE.match(piece)
        if match is None:
            continue
        number, grade = int(match.group(1)), float(match.group(2))
        if 1 <= number <= n:
            found.setdefault(number, set()).add(grade)
    grades: list[float | None] = []
    for number in range(1, n + 1):
        values = found.get(number, set())
        grade = next(iter(values)) if len(values) == 1 else None
        valid = grade is not None and math.isfinite(grade) and 0.0 <= grade <= MAX_GRADE
        grades.append(grade if valid else None)
    return grades


# ----------------------------------------------------------------------------- LLM judge

@dataclass
class JudgeStats:
    """What an `LLMJudgeReranker` has done so far."""

    requests: int = 0
    failed_requests: int = 0
    judged: int = 0
    unjudged: int = 0


@dataclass
class LLMJudgeReranker:
    """Reorders hits by a chat model's 0-10 relevance grades (see the module docstring)."""

    model: ChatModel
    batch_size: int = 10
    max_passage_chars: int = 1000
    first_stage_weight: float = 0.0
    on_error: OnError = "raise"
    reply_tokens: int | None = None  # max_tokens per request; None: 16 + 8 per passage
    usage: Usage = field(default_factory=Usage, init=False)
    stats: JudgeStats = field(default_factory=JudgeStats, init=False)

    def __post_init__(self) -> None:
        if not callable(getattr(self.model, "complete", None)):
            raise TypeError(f"LLMJudgeReranker needs a chat model with complete(messages), "
                            f"got {type(self.model).__name__}")
        check_int("batch_size", self.batch_size, 1)
        check_int("max_passage_chars", self.max_passage_chars, 1)
        _check_weight(self.first_stage_weight)
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}; "
                             f"got {self.on_error!r}")
        if self.reply_tokens is not None:
            check_int("reply_tokens", self.reply_tokens, 1)

    def grades(self, query: str, hits: Sequence[Hit]) -> list[float | None]:
        """The model's grade (0-10) of each hit, in input order; None where unjudged."""
        _check_inputs(query, hits)
        result: list[float | None] = []
        for start in range(0, len(hits), self.batch_size):
            result.extend(self._judge_batch(query, hits[start:start + self.batch_size]))
        judged = sum(g is not None for g in result)
        self.stats.judged += judged
        self.stats.unjudged += len(result) - judged
        return result

    def _judge_batch(self, query: str, batch: Sequence[Hit]) -> list[float | None]:
        messages = judge_messages(query, [hit.text for hit in batch], self.max_passage_chars)
        max_tokens = self.reply_tokens or 16 + 8 * len(batch)
        self.stats.requests += 1
        try:
            reply = self.model.complete(messages, max_tokens=max_tokens)
        except ModelError as e:
            self.stats.failed_requests += 1
            if self.on_error == "raise":
                raise ModelError(f"LLM judge request failed: {e}", e.status) from e
            logger.warning("LLM judge request failed, keeping the first-stage order of "
                           "%d hits: %s", len(batch), e)
            return [None] * len(batch)
        self.usage.add(reply.usage)
        content = reply.message.get("content")
        grades = parse_grades(content if isinstance(content, str) else "", len(batch))
        if None in grades:
            logger.info("LLM judge left %d of %d passages unjudged; reply: %.200r",
                        grades.count(None), len(batch), content)
        return grades

    def _ranked(self, query: str, hits: Sequence[Hit]) -> list[tuple[int, float]]:
        """(input index, score) pairs, best first."""
        grades = self.grades(query, hits)
        judged = [i for i, g in enumerate(grades) if g is not None]
        if not judged:
            return [(i, float(hit.score)) for i, hit in enumerate(hits)]
        w = float(self.first_stage_weight)
        first = _minmax([float(hit.score) for hit in hits])
        value = {i: (1.0 - w) * grades[i] / MAX_GRADE + w * first[i] for i in judged}
        order = iter(sorted(judged, key=lambda i: (-value[i], i)))
        ranked, previous = [], max(value.values())
        for grade_index, grade in enumerate(grades):
            index = grade_index if grade is None else next(order)
            previous = previous if grade is None else value[index]
            ranked.append((index, previous))
        return ranked

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        """The score each hit gets in `rerank` (see the module docstring), in input order."""
        result = [0.0] * len(hits)
        for index, score in self._ranked(query, hits):
            result[index] = score
        return result

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The top k of `hits` reordered by the model's grades (blended as configured)."""
        check_int("k", k, 1)
        ranked = self._ranked(query, hits)[:k]
        return [replace(hits[index], score=score) for index, score in ranked]


# ----------------------------------------------------------------------------- cross-encoder

def _check_model_dir(model_dir: str | Path) -> Path:
    if not isinstance(model_dir, str | Path):
        raise TypeError(f"model_dir must be a str or Path, got {type(model_dir).__name__}")
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"model_dir {str(path)!r} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"model_dir {str(path)!r} holds no model: config.json is missing")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"model_dir {str(path)!r} holds no model weights (one of "
                         f"{', '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"model_dir {str(path)!r} holds no tokenizer (one of "
                         f"{', '.join(TOKENIZER_FILES)})")
    return path


@dataclass
class CrossEncoderReranker:
    """Reorders hits by a local cross-encoder's relevance logit (see the module docstring)."""

    model_dir: str | Path
    batch_size: int = 32
    max_length: int = 512
    device: str = "cpu"
    first_stage_weight: float = 0.0
    _tokenizer: Any = field(default=None, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model_dir = _check_model_dir(self.model_dir)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_length", self.max_length, 2)
        _check_weight(self.first_stage_weight)
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str such as 'cpu' or 'cuda', got "
                            f"{type(self.device).__name__}")

    def load(self) -> None:
        """Load the tokenizer and model now (done on first use otherwise)."""
        if self._model is not None:
            return
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"CrossEncoderReranker needs transformers: {RAG_EXTRA}") from e
        where = str(self.model_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                where, local_files_only=True)
        except ImportError:
            raise
        except Exception as e:  # a bad folder fails in many ways (OSError, SafetensorError, ..)
            raise ValueError(f"cannot load a sequence-classification model and tokenizer "
                             f"from {where!r}: {e}") from e
        if len(tokenizer) <= len(tokenizer.all_special_tokens):
            raise ValueError(f"the tokenizer in {where!r} has no vocabulary beyond its "
                             f"special tokens")
        if model.config.num_labels != 1:
            raise ValueError(f"the cross-encoder in {where!r} must have one output "
                             f"(num_labels=1), it has {model.config.num_labels}")
        self._tokenizer, self._model = tokenizer, model.to(self.device).eval()

    def _length(self) -> int:
        limit = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < self.max_length:
            return limit
        return self.max_length

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        """The model's relevance logit for each (query, hit text) pair, in input order."""
        _check_inputs(query, hits)
        if not hits:
            return []
        self.load()
        import torch

        result: list[float] = []
        for start in range(0, len(hits), self.batch_size):
            texts = [hit.text for hit in hits[start:start + self.batch_size]]
            batch = self._tokenizer([query] * len(texts), texts, padding=True,
                                    truncation=True, max_length=self._length(),
                                    return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self._model(**batch).logits
            result.extend(float(x) for x in logits[:, 0].float().cpu())
        return result

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The top k of `hits` reordered by logit (blended with the first-stage ranking)."""
        check_int("k", k, 1)
        return rescored(hits, self.scores(query, hits), k, self.first_stage_weight)
