"""Tests of llmsys.rag.generation_metrics with a scripted judge over loopback HTTP.

The judge answers deterministically from the prompt it receives: claims are the answer's
sentences, a claim is supported iff all its words occur in the context, and the questions it
generates come from a table in the test. Each metric is checked against the same quantity
computed here directly from the sample (the fraction of sentences whose words are all in the
context; the mean cosine computed with numpy), so a wrong prompt, parse or formula fails."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("openai")

from llmsys.agent.chat_model import ChatModel, ModelError  # noqa: E402
from llmsys.agent.scripted import Play, ScriptedChatServer  # noqa: E402
from llmsys.rag.answer import REFUSAL, Answer, Source  # noqa: E402
from llmsys.rag.generation_metrics import (  # noqa: E402
    CLAIMS_PROMPT,
    QUESTIONS_PROMPT,
    VERDICTS_PROMPT,
    GenerationSample,
    JudgeConfig,
    JudgeReplyError,
    answer_relevance,
    evaluate_generation,
    faithfulness,
    parse_json_reply,
)


class WordsEmbedder:
    """Hashed bag of words, L2-normalised float32 rows."""

    name = "words-metrics-test"
    dim = 32

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in words(text):
                rows[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def sentences(answer: str) -> list[str]:
    """The test's claims: sentences without citation markers."""
    text = re.sub(r"\s*\[\d+(?:,\s*\d+)*\]", "", answer)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def supported(claim: str, contexts: list[str]) -> bool:
    return set(words(claim)) <= set(words(" ".join(contexts)))


GENERATED = {  # answer -> the questions the scripted judge "generates" from it
    "Paris is the capital of France [1]. It has the Louvre.": [
        "What is the capital of France?", "Which city has the Louvre?", "capital France"],
    "Bananas are yellow.": ["What colour are bananas?", "Are bananas yellow?",
                            "bananas yellow colour"],
}


def judge_reply(body: dict) -> dict:
    """The scripted judge: reads the task from the system prompt and answers from the user
    message, in the varied shapes real judges use (fences, prose, keyed verdicts)."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if system == CLAIMS_PROMPT:
        answer = user.split("\n\nAnswer:\n", 1)[1]
        claims = sentences(answer)
        return {"content": f"Here you go:\n```json\n{json.dumps({'claims': claims})}\n```"}
    if system == VERDICTS_PROMPT:
        context, claims_text = user[len("Context:\n"):].rsplit("\n\nClaims:\n", 1)
        claims = [line.split(". ", 1)[1] for line in claims_text.splitlines()]
        verdicts = [{"claim": n, "supported": "yes" if supported(c, [context]) else "no",
                     "reason": "words"} for n, c in enumerate(claims, start=1)]
        return {"content": json.dumps({"verdicts": verdicts[::-1]})}   # keyed, out of order
    if system == QUESTIONS_PROMPT.format(n=3):
        answer = user.split("Answer:\n", 1)[1]
        if answer in GENERATED:
            return {"content": json.dumps({"questions": GENERATED[answer],
                                           "noncommittal": False})}
        return {"content": json.dumps({"questions": ["What?"], "noncommittal": True})}
    return {"status": 400, "message": f"unexpected judge prompt: {system[:60]}"}


@pytest.fixture(scope="module")
def shared() -> Iterator[ScriptedChatServer]:
    """One scripted chat server for the module; each test runs its script with `play`."""
    with ScriptedChatServer([]) as server:
        yield server


def judge_for(server: Play) -> ChatModel:
    return ChatModel(server.base_url, "judge")


def expected_relevance(question: str, generated: list[str]) -> float:
    vectors = WordsEmbedder().embed([question, *generated]).astype(np.float64)
    return float(np.mean([vectors[0] @ v / np.linalg.norm(v) / np.linalg.norm(vectors[0])
                          for v in vectors[1:]]))


SAMPLES = [
    GenerationSample("What is the capital of France?",
                     "Paris is the capital of France [1]. It has the Louvre.",
                     ("Paris is the capital of France.", "The Eiffel tower is in Paris.")),
    GenerationSample("What colour are bananas?", "Bananas are yellow.",
                     ("Bananas are yellow fruit.",)),
    GenerationSample("Who wrote it?", "Ann wrote it. Bob edited it. Ann is tall.",
                     ("Ann wrote it in 1990 and Bob edited it.",)),
]


# ----------------------------------------------------------------------------- faithfulness

def test_faithfulness_equals_fraction_of_supported_sentences(shared: ScriptedChatServer) -> None:
    with shared.play(judge_reply) as server:
        results = [faithfulness(s.question, s.answer, s.contexts, judge_for(server))
                   for s in SAMPLES]
    for sample, result in zip(SAMPLES, results, strict=True):
        claims = sentences(sample.answer)
        expected = sum(supported(c, list(sample.contexts)) for c in claims) / len(claims)
        assert result.error is None and result.score == pytest.approx(expected)
        assert [v.claim for v in result.claims] == claims
        assert [v.supported for v in result.claims] == [supported(c, list(sample.contexts))
                                                         for c in claims]
        assert result.usage.calls == 2
    assert [r.score for r in results] == pytest.approx([0.5, 1.0, 2 / 3])   # not all equal
    verdict_request = server.requests[1]["messages"][1]["content"]
    assert "Paris is the capital of France.\n\nThe Eiffel tower is in Paris." in verdict_request
    assert "1. Paris is the capital of France.\n2. It has the Louvre." in verdict_request


def test_faithfulness_edge_cases_without_scores(shared: ScriptedChatServer) -> None:
    with shared.play(judge_reply) as server:
        judge = judge_for(server)
        empty = faithfulness("q?", "   ", ["ctx"], judge)
        refusal = faithfulness("q?", REFUSAL, ["ctx"], judge)
        calls_before = len(server.requests)
        no_context = faithfulness("q?", "Ann wrote it. Bob did.", [], judge)
    assert calls_before == 0                                       # neither asked the judge
    assert (empty.score, empty.note, empty.error) == (None, "empty answer", None)
    assert (refusal.score, refusal.note) == (None, "refusal")
    assert no_context.score == 0.0 and len(server.requests) == 1   # claims only, no verdicts
    assert [v.supported for v in no_context.claims] == [False, False]


@pytest.mark.parametrize(("claims_reply", "verdicts_reply", "error"), [
    ("I think it is fine.", None, "claim extraction: unparseable judge reply"),
    ('{"claims": "one claim"}', None, "expected a 'claims' list"),
    ('{"claims": ["A.", "B."]}', '{"verdicts": [{"claim": 1, "supported": true}]}',
     r"verdicts for claims \[1\], expected 1..2"),
    ('{"claims": ["A.", "B."]}', '{"verdicts": [true, "maybe"]}', "verdict 2 is not"),
    ('{"claims": ["A."]}', "", "the judge returned no text"),
])
def test_unparseable_judge_replies_are_failures(shared: ScriptedChatServer, claims_reply: str,
                                                verdicts_reply: str | None, error: str) -> None:
    script = [{"content": claims_reply}] + ([{"content": verdicts_reply}]
                                            if verdicts_reply is not None else [])
    with shared.play(script) as server:
        result = faithfulness("q?", "A. B.", ["A B"], judge_for(server))
    assert result.score is None and re.search(error, result.error)
    assert len(server.requests) == len(script)


def test_no_claims_is_unscored_not_zero(shared: ScriptedChatServer) -> None:
    with shared.play([{"content": '{"claims": []}'}]) as server:
        result = faithfulness("q?", "Hmm, well.", ["ctx"], judge_for(server))
    assert (result.score, result.note, result.error) == (None, "no claims", None)


@pytest.mark.parametrize("verdicts", ['[1, 0, 1]', '{"verdicts": ["yes", "no", "true"]}',
                                      '[{"verdict": 1}, {"verdict": "no"}, {"faithful": true}]'])
def test_verdict_shapes(shared: ScriptedChatServer, verdicts: str) -> None:
    with shared.play([{"content": '["A.", "B.", "C."]'},
                     {"content": f"Verdicts: {verdicts} done"}]) as server:
        result = faithfulness("q?", "A. B. C.", ["x"], judge_for(server))
    assert result.score == pytest.approx(2 / 3)
    assert [v.supported for v in result.claims] == [True, False, True]


def test_a_bracketed_claim_number_before_the_json_is_not_the_verdict(
        shared: ScriptedChatServer) -> None:
    reply = ('Checking claim [1] against the context: '
             '{"verdicts": [{"claim": 1, "supported": false}]}')
    assert parse_json_reply(reply, "verdicts") == {"verdicts": [{"claim": 1,
                                                                "supported": False}]}
    assert parse_json_reply(reply) == [1]           # without a key: the first value
    with shared.play([{"content": '{"claims": ["Ann wrote it."]}'}, {"content": reply}]) \
            as server:
        result = faithfulness("Who?", "Ann wrote it.", ["Bob wrote it."], judge_for(server))
    assert result.score == 0.0 and result.error is None


def test_parse_json_reply() -> None:
    assert parse_json_reply('```json\n{"a": "}{"}\n```') == {"a": "}{"}
    assert parse_json_reply('Sure! [1, {"b": 2}] and more {"c": 3}') == [1, {"b": 2}]
    assert parse_json_reply('bad {"a": } then {"ok": true}') == {"ok": True}
    for garbage in ("", "no json here", "{not json", None):
        with pytest.raises(JudgeReplyError):
            parse_json_reply(garbage)


# ----------------------------------------------------------------------------- relevance

def test_answer_relevance_equals_mean_cosine_of_generated_questions(
        shared: ScriptedChatServer) -> None:
    embedder = WordsEmbedder()
    with shared.play(judge_reply) as server:
        results = [answer_relevance(s.question, s.answer, judge_for(server), embedder)
                   for s in SAMPLES[:2]]
    for sample, result in zip(SAMPLES[:2], results, strict=True):
        generated = GENERATED[sample.answer]
        assert result.questions == generated and not result.noncommittal
        assert result.score == pytest.approx(expected_relevance(sample.question, generated))
        assert 0.3 < result.score < 1.0                    # not a degenerate value
    assert server.requests[0]["messages"][1]["content"] == f"Answer:\n{SAMPLES[0].answer}"


def test_relevance_is_zero_for_refusal_empty_and_noncommittal(shared: ScriptedChatServer) -> None:
    embedder = WordsEmbedder()
    with shared.play(judge_reply) as server:
        judge = judge_for(server)
        refusal = answer_relevance("q?", f"Sorry. {REFUSAL}", judge, embedder)
        empty = answer_relevance("q?", "", judge, embedder)
        assert server.requests == []
        vague = answer_relevance("q?", "It depends on many things.", judge, embedder)
    assert [r.score for r in (refusal, empty, vague)] == [0.0, 0.0, 0.0]
    assert (refusal.note, empty.note, vague.note) == ("refusal", "empty answer", "noncommittal")
    assert vague.noncommittal and vague.error is None and len(server.requests) == 1


def test_relevance_judge_garbage_and_fewer_questions(shared: ScriptedChatServer) -> None:
    embedder = WordsEmbedder()
    with shared.play([{"content": "questions: none"},
                     {"content": '{"questions": [], "noncommittal": false}'},
                     {"content": '{"questions": ["a b", "c d", "e f", "g h"]}'},
                     {"content": '{"questions": ["a b"], "noncommittal": "perhaps"}'}]
                     ) as server:
        judge = judge_for(server)
        garbage = answer_relevance("q a?", "A real answer.", judge, embedder)
        none = answer_relevance("q a?", "A real answer.", judge, embedder)
        extra = answer_relevance("q a?", "A real answer.", judge, embedder,
                                 JudgeConfig(n_questions=3))
        odd = answer_relevance("q a?", "A real answer.", judge, embedder)
    assert garbage.score is None and "unparseable" in garbage.error
    assert none.score is None and "no question" in none.error
    assert extra.questions == ["a b", "c d", "e f"]
    assert extra.score == pytest.approx(expected_relevance("q a?", ["a b", "c d", "e f"]))
    assert odd.score is None and "noncommittal" in odd.error


# ----------------------------------------------------------------------------- evaluation

def test_evaluate_generation_report_means_and_failures(shared: ScriptedChatServer) -> None:
    samples = [*SAMPLES[:2], GenerationSample("Empty?", "", ("ctx",)),
               GenerationSample("Garbage?", "Some claim here.", ("ctx",))]

    def judge(body: dict) -> dict:
        if "Some claim here." in body["messages"][1]["content"]:
            return {"content": "no idea"}                        # garbage for the 4th sample
        return judge_reply(body)

    with shared.play(judge) as server:
        report = evaluate_generation(samples, judge_for(server), WordsEmbedder())
    faith = [0.5, 1.0]
    relevance = [expected_relevance(s.question, GENERATED[s.answer]) for s in SAMPLES[:2]]
    assert report.mean_faithfulness == pytest.approx(np.mean(faith))
    assert report.mean_answer_relevance == pytest.approx(np.mean(relevance + [0.0]))
    assert (report.faithfulness_failures, report.relevance_failures) == (1, 1)
    assert report.judge_failures == 2 and report.unscored_faithfulness == 1
    assert report.samples[2].faithfulness.note == "empty answer"
    assert report.usage.calls == len(server.requests) == 3 + 3 + 0 + 2
    assert json.loads(json.dumps(report.to_dict()))["judge_failures"] == 2


def test_sample_from_answer_and_bad_inputs() -> None:
    source = Source(1, "c1", "d1", "T", "s", "Paris is big.", 0, 13, 0.9)
    sample = GenerationSample.from_answer(Answer("Q?", "Paris is big [1].", [], [source],
                                                 False))
    assert sample == GenerationSample("Q?", "Paris is big [1].", ("Paris is big.",))
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        GenerationSample(" ", "a")
    with pytest.raises(TypeError, match="contexts must be a sequence of strings"):
        GenerationSample("q?", "a", "one context")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_questions must be an int >= 1"):
        JudgeConfig(n_questions=0)
    judge = ChatModel("http://127.0.0.1:9/v1", "unused")
    with pytest.raises(TypeError, match="samples must be a sequence of GenerationSample"):
        evaluate_generation([("q", "a", [])], judge, WordsEmbedder())  # type: ignore[list-item]
    with pytest.raises(TypeError, match="embedder must have embed"):
        answer_relevance("q?", "a", judge, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="judge must be a ChatModel"):
        faithfulness("q?", "a", [], "judge")  # type: ignore[arg-type]


def test_judge_endpoint_failure_names_the_step(shared: ScriptedChatServer) -> None:
    with shared.play([{"status": 400, "message": "model not loaded"}]) as server:
        with pytest.raises(ModelError, match=r"claim extraction.*model not loaded"):
            faithfulness("q?", "An answer.", ["ctx"], judge_for(server))
