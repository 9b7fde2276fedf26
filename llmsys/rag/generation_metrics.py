"""Generation metrics of a RAG answer through a judge model: faithfulness and answer relevance,
after the definitions of RAGAS.

    from llmsys.agent.chat_model import ChatModel
    from llmsys.agent.memory import MiniLMEmbedder
    from llmsys.rag.generation_metrics import GenerationSample, evaluate_generation

    judge = ChatModel(base_url, "judge-model")
    samples = [GenerationSample("Who wrote it?", "Ann wrote it [1].", ("Ann wrote the book.",)),
               GenerationSample.from_answer(rag.answer("How do I install it?"))]
    report = evaluate_generation(samples, judge, MiniLMEmbedder())
    report.mean_faithfulness, report.mean_answer_relevance, report.judge_failures
    report.samples[0].faithfulness.claims       # [ClaimVerdict(claim, supported, reason)]

- Faithfulness: the judge splits the answer into claims (`CLAIMS_PROMPT`), then gives one
  verdict per claim on whether the contexts support it (`VERDICTS_PROMPT`); the score is
  supported claims / claims. An empty answer, a refusal (it holds the refusal sentence of
  `llmsys.rag.answer`; no judge call) or an answer without claims has no score (None, with
  a note), as RAGAS gives NaN. Without any context every claim is unsupported (no verdict
  call).
- Answer relevance: the judge writes `n_questions` questions the answer would answer and says
  whether the answer is noncommittal (`QUESTIONS_PROMPT`); the score is the mean cosine
  between the embedding of the real question and those of the generated ones, and 0 for a
  noncommittal answer. An empty answer or one holding the refusal sentence of
  `llmsys.rag.answer` scores 0 without a judge call.

Judge replies are read as JSON, robustly: code fences and text around the first JSON value are
ignored, `{"claims": [...]}` or a bare list, verdicts as booleans, 0/1 or yes/no, keyed by
claim number or in order. A reply that cannot be read (no JSON, wrong shape, a verdict missing
for some claim) is a judge failure: the metric is None and `error` says why, quoting the
reply; it is never counted as 0 or 1. `evaluate_generation` averages each metric over the
samples that have a score and counts the failures. An endpoint failure raises `ModelError`
naming the step.

Limits: one judge call per step (no retry on an unreadable reply); the scores are only as good
as the judge; relevance depends on the embedder (use the retriever's, e.g. MiniLM).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from llmsys.agent.chat_model import ChatModel, ModelError, Usage
from llmsys.rag.answer import REFUSAL, Answer, is_refusal

if TYPE_CHECKING:
    from llmsys.agent.memory import Embedder

__all__ = ["CLAIMS_PROMPT", "QUESTIONS_PROMPT", "VERDICTS_PROMPT", "ClaimVerdict",
           "FaithfulnessResult", "GenerationReport", "GenerationSample", "JudgeConfig",
           "JudgeReplyError", "RelevanceResult", "SampleResult", "answer_relevance",
           "claims_message", "evaluate_generation", "faithfulness", "parse_json_reply",
           "verdicts_message"]

CLAIMS_PROMPT = (
    "You split an answer into claims. A claim is one short, self-contained factual statement "
    "made by the answer (replace pronouns by what they refer to). Leave out citation markers "
    "like [1], and anything that is not a factual statement. Reply with only a JSON object: "
    '{"claims": ["first claim", "second claim"]}. If the answer states nothing, reply '
    '{"claims": []}.')

VERDICTS_PROMPT = (
    "You check claims against a context. For each numbered claim, decide whether it can be "
    "directly inferred from the context alone (supported: true) or not (supported: false). "
    'Reply with only a JSON object with one verdict per claim, in order: {"verdicts": '
    '[{"claim": 1, "supported": true, "reason": "a short reason"}]}.')

QUESTIONS_PROMPT = (
    "You are given an answer. Write {n} different questions that this answer answers, as a "
    "user would ask them. Also say whether the answer is noncommittal: evasive, vague, or "
    "saying that it does not know. Reply with only a JSON object: "
    '{{"questions": ["question 1", "question 2"], "noncommittal": false}}.')


class JudgeReplyError(ValueError):
    """A judge reply that cannot be read as the JSON asked for; the message quotes it."""


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class GenerationSample:
    """A question, the generated answer and the context texts it was generated from."""

    question: str
    answer: str
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"question must be a non-empty string, got {self.question!r}")
        if not isinstance(self.answer, str):
            raise TypeError(f"answer must be a string, got {type(self.answer).__name__}")
        if isinstance(self.contexts, str) or not all(isinstance(c, str) for c in self.contexts):
            raise TypeError(f"contexts must be a sequence of strings, got {self.contexts!r}")
        object.__setattr__(self, "contexts", tuple(self.contexts))

    @classmethod
    def from_answer(cls, answer: Answer) -> GenerationSample:
        """The question, answer text and shown source texts of a `RAG` answer."""
        return cls(answer.question, answer.text, tuple(s.text for s in answer.sources))


@dataclass(frozen=True)
class JudgeConfig:
    """`n_questions` generated per answer for relevance; `max_tokens` per judge reply;
    `refusal` the sentence whose presence makes an answer score 0 for relevance."""

    n_questions: int = 3
    max_tokens: int = 1024
    refusal: str = REFUSAL

    def __post_init__(self) -> None:
        for name in ("n_questions", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.refusal, str) or not self.refusal.strip():
            raise ValueError(f"refusal must be a non-empty string, got {self.refusal!r}")


@dataclass(frozen=True)
class ClaimVerdict:
    claim: str
    supported: bool
    reason: str = ""


@dataclass
class FaithfulnessResult:
    """`score` is None when there is nothing to score (`note`) or the judge failed (`error`)."""

    score: float | None
    claims: list[ClaimVerdict] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class RelevanceResult:
    """`score` is None only when the judge failed (`error`)."""

    score: float | None
    questions: list[str] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    noncommittal: bool = False
    error: str | None = None
    note: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class SampleResult:
    sample: GenerationSample
    faithfulness: FaithfulnessResult
    relevance: RelevanceResult


@dataclass
class GenerationReport:
    """Per-sample results; means over the samples with a score; failure counts."""

    samples: list[SampleResult]
    mean_faithfulness: float | None
    mean_answer_relevance: float | None
    faithfulness_failures: int
    relevance_failures: int
    unscored_faithfulness: int  # no score and no failure: empty answer, refusal, no claims
    usage: Usage

    @property
    def judge_failures(self) -> int:
        return self.faithfulness_failures + self.relevance_failures

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["judge_failures"] = self.judge_failures
        return data


# ----------------------------------------------------------------------------- JSON replies

def _excerpt(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_json_reply(text: str | None, key: str | None = None) -> Any:
    """The first JSON object or array in a judge reply (code fences and surrounding prose
    ignored); with `key`, the first object holding `key` wins over any earlier value (so a
    "[1]" in the prose before the answer is not taken for it). JudgeReplyError if none."""
    if not isinstance(text, str) or not text.strip():
        raise JudgeReplyError("the judge returned no text")
    decoder = json.JSONDecoder()
    first: Any = None
    for i, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            if key is not None and isinstance(value, dict) and key in value:
                return value
            if isinstance(value, dict | list) and first is None:
                if key is None:
                    return value
                first = value
    if first is not None:
        return first
    raise JudgeReplyError(f"unparseable judge reply (no JSON object or array): {_excerpt(text)}")


def _strings(value: Any, key: str, text: str) -> list[str]:
    if isinstance(value, dict):
        value = value.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JudgeReplyError(f"unparseable judge reply (expected a {key!r} list of strings): "
                              f"{_excerpt(text)}")
    return [v.strip() for v in value if v.strip()]


_TRUE = {"true", "yes", "supported", "1"}
_FALSE = {"false", "no", "unsupported", "not supported", "0"}
_VERDICT_KEYS = ("supported", "verdict", "faithful", "support")


def _truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else None
    return None


def _one_verdict(item: Any) -> tuple[int | None, bool | None, str]:
    """(claim number or None, verdict or None, reason) of one entry of the verdict list."""
    if not isinstance(item, dict):
        return None, _truth(item), ""
    number = item.get("claim")
    if isinstance(number, str) and number.strip().isdigit():
        number = int(number)
    key = next((k for k in _VERDICT_KEYS if k in item), None)
    verdict = _truth(item[key]) if key else None
    reason = item.get("reason")
    return (number if isinstance(number, int) and not isinstance(number, bool) else None,
            verdict, reason if isinstance(reason, str) else "")


def _parse_verdicts(text: str, claims: list[str]) -> list[ClaimVerdict]:
    value = parse_json_reply(text, "verdicts")
    items = value.get("verdicts") if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise JudgeReplyError(f"unparseable judge reply (expected a 'verdicts' list): "
                              f"{_excerpt(text)}")
    found: dict[int, tuple[bool, str]] = {}
    for position, item in enumerate(items, start=1):
        number, verdict, reason = _one_verdict(item)
        if verdict is None:
            raise JudgeReplyError(f"unparseable judge reply (verdict {position} is not "
                                  f"true/false): {_excerpt(text)}")
        found.setdefault(number if number is not None else position, (verdict, reason))
    expected = set(range(1, len(claims) + 1))
    if set(found) != expected:
        raise JudgeReplyError(f"judge gave verdicts for claims {sorted(found)}, expected "
                              f"1..{len(claims)}: {_excerpt(text)}")
    return [ClaimVerdict(c, *found[i]) for i, c in enumerate(claims, start=1)]


def _parse_questions(text: str, n: int) -> tuple[list[str], bool]:
    value = parse_json_reply(text, "questions")
    questions = _strings(value, "questions", text)[:n]
    noncommittal = _truth(value.get("noncommittal", False)) if isinstance(value, dict) else False
    if noncommittal is None:
        raise JudgeReplyError(f"unparseable judge reply ('noncommittal' is not true/false): "
                              f"{_excerpt(text)}")
    if not questions and not noncommittal:
        raise JudgeReplyError(f"the judge generated no question: {_excerpt(text)}")
    return questions, noncommittal


# ----------------------------------------------------------------------------- judge calls

def _check_judge(judge: ChatModel) -> None:
    if not callable(getattr(judge, "complete", None)):
        raise TypeError(f"judge must be a ChatModel (with complete(messages)), got "
                        f"{type(judge).__name__}")


def _ask(judge: ChatModel, system: str, user: str, config: JudgeConfig, step: str,
         usage: Usage) -> str | None:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        reply = judge.complete(messages, max_tokens=config.max_tokens)
    except ModelError as e:
        raise ModelError(f"judge request failed ({step}): {e}", e.status) from e
    usage.add(reply.usage)
    return reply.message.get("content")


def claims_message(question: str, answer: str) -> str:
    """The user message of the claim-extraction call."""
    return f"Question:\n{question}\n\nAnswer:\n{answer}"


def verdicts_message(contexts: Sequence[str], claims: Sequence[str]) -> str:
    """The user message of the verdict call: the contexts, then the numbered claims."""
    numbered = "\n".join(f"{i}. {c}" for i, c in enumerate(claims, start=1))
    return "Context:\n" + "\n\n".join(contexts) + f"\n\nClaims:\n{numbered}"


def faithfulness(question: str, answer: str, contexts: Sequence[str], judge: ChatModel,
                 config: JudgeConfig | None = None) -> FaithfulnessResult:
    """Fraction of the answer's claims that the contexts support (module docstring)."""
    config = config or JudgeConfig()
    sample = GenerationSample(question, answer, tuple(contexts))
    _check_judge(judge)
    if not sample.answer.strip():
        return FaithfulnessResult(None, note="empty answer")
    if is_refusal(sample.answer, config.refusal):
        return FaithfulnessResult(None, note="refusal")
    usage = Usage()
    text = _ask(judge, CLAIMS_PROMPT, claims_message(question, answer), config,
                "claim extraction", usage)
    try:
        claims = _strings(parse_json_reply(text, "claims"), "claims", text or "")
    except JudgeReplyError as e:
        return FaithfulnessResult(None, error=f"claim extraction: {e}", usage=usage)
    if not claims:
        return FaithfulnessResult(None, note="no claims", usage=usage)
    if not any(c.strip() for c in sample.contexts):
        verdicts = [ClaimVerdict(c, False, "no context given") for c in claims]
        return FaithfulnessResult(0.0, verdicts, usage=usage)
    text = _ask(judge, VERDICTS_PROMPT, verdicts_message(sample.contexts, claims), config,
                "claim verdicts", usage)
    try:
        verdicts = _parse_verdicts(text or "", claims)
    except JudgeReplyError as e:
        return FaithfulnessResult(None, error=f"claim verdicts: {e}", usage=usage)
    score = sum(v.supported for v in verdicts) / len(verdicts)
    return FaithfulnessResult(score, verdicts, usage=usage)


def _cosines(embedder: Embedder, question: str, generated: list[str]) -> list[float]:
    vectors = np.asarray(embedder.embed([question, *generated]), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(generated) + 1:
        raise ValueError(f"embedder returned shape {vectors.shape} for {len(generated) + 1} "
                         "texts; expected one row per text")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    return [float(s) for s in vectors[1:] @ vectors[0]]


def answer_relevance(question: str, answer: str, judge: ChatModel, embedder: Embedder,
                     config: JudgeConfig | None = None) -> RelevanceResult:
    """Mean cosine between the question and questions generated from the answer; 0 for an
    empty, refusing or noncommittal answer (module docstring)."""
    config = config or JudgeConfig()
    GenerationSample(question, answer)  # validates both
    _check_judge(judge)
    if not callable(getattr(embedder, "embed", None)):
        raise TypeError(f"embedder must have embed(texts), got {type(embedder).__name__}")
    if not answer.strip():
        return RelevanceResult(0.0, noncommittal=True, note="empty answer")
    if is_refusal(answer, config.refusal):
        return RelevanceResult(0.0, noncommittal=True, note="refusal")
    usage = Usage()
    text = _ask(judge, QUESTIONS_PROMPT.format(n=config.n_questions), f"Answer:\n{answer}",
                config, "question generation", usage)
    try:
        questions, noncommittal = _parse_questions(text or "", config.n_questions)
    except JudgeReplyError as e:
        return RelevanceResult(None, error=f"question generation: {e}", usage=usage)
    similarities = _cosines(embedder, question, questions) if questions else []
    score = 0.0 if noncommittal else float(np.mean(similarities))
    return RelevanceResult(score, questions, similarities, noncommittal,
                           note="noncommittal" if noncommittal else None, usage=usage)


# ----------------------------------------------------------------------------- evaluation

def _mean(values: list[float | None]) -> float | None:
    scored = [v for v in values if v is not None and not math.isnan(v)]
    return sum(scored) / len(scored) if scored else None


def evaluate_generation(samples: Sequence[GenerationSample], judge: ChatModel,
                        embedder: Embedder, config: JudgeConfig | None = None
                        ) -> GenerationReport:
    """Faithfulness and answer relevance of every sample, their means and failure counts."""
    config = config or JudgeConfig()
    if isinstance(samples, str | bytes) or not all(isinstance(s, GenerationSample)
                                                  for s in samples):
        raise TypeError("samples must be a sequence of GenerationSample (see "
                        "GenerationSample.from_answer)")
    results, usage = [], Usage()
    for sample in samples:
        faith = faithfulness(sample.question, sample.answer, sample.contexts, judge, config)
        relevance = answer_relevance(sample.question, sample.answer, judge, embedder, config)
        usage.add(faith.usage)
        usage.add(relevance.usage)
        results.append(SampleResult(sample, faith, relevance))
    return GenerationReport(
        results, _mean([r.faithfulness.score for r in results]),
        _mean([r.relevance.score for r in results]),
        sum(r.faithfulness.error is not None for r in results),
        sum(r.relevance.error is not None for r in results),
        sum(r.faithfulness.score is None and r.faithfulness.error is None for r in results),
        usage)
