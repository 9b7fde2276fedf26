"""Tests of llmsys.rag.rerankers: the LLM judge against a scripted chat server that grades
passages by word overlap with the query (read back from the prompt), and the cross-encoder
against a tiny random BERT built offline in a temporary folder, whose logits are recomputed
here with `transformers` directly."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmsys.agent.chat_model import ChatModel, ModelError
from llmsys.agent.memory import approx_tokens
from llmsys.agent.scripted import Play, ScriptedChatServer
from llmsys.rag.rerankers import (
    CrossEncoderReranker,
    LLMJudgeReranker,
    judge_messages,
    parse_grades,
)
from llmsys.rag.store import Hit

TEXTS = ["The car engine roars on the road.",
         "A garden full of flower beds.",
         "Car repair: the engine oil and the car battery.",
         "An old forest with a tall tree.",
         "Engine noise in a parked car.",
         "The zx81 manual has many pages.",
         "Flower and tree care in the forest garden."]


def make_hits(texts: list[str] = TEXTS) -> list[Hit]:
    return [Hit(f"c{i}", f"d{i}", float(len(texts) - i), t, 0, len(t))
            for i, t in enumerate(texts)]


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def overlap_grade(query: str, text: str) -> int:
    return min(10, 3 * len(words(query) & words(text)))


def overlap_judge(replies: list[str]):
    """A scripted reply: grades every "[i] passage" of the prompt by word overlap."""
    def reply(body: dict) -> dict:
        user = body["messages"][-1]["content"]
        query = re.search(r"^Query: (.*)$", user, re.M).group(1)
        lines = [f"[{n}] {overlap_grade(query, text)}"
                 for n, text in re.findall(r"^\[(\d+)\] (.*)$", user, re.M)]
        replies.append("\n".join(lines))
        return {"content": replies[-1]}
    return reply


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    """One scripted chat server for the module; each test runs its script with `play`."""
    with ScriptedChatServer([]) as server:
        yield server


def model_for(server: Play) -> ChatModel:
    return ChatModel(server.base_url, "judge", max_retries=0)


def expected_order(query: str, hits: list[Hit]) -> list[int]:
    grades = [overlap_grade(query, h.text) for h in hits]
    return sorted(range(len(hits)), key=lambda i: (-grades[i], i))


# ----------------------------------------------------------------------------- LLM judge

def test_judge_orders_by_grades_read_from_the_prompt(chat: ScriptedChatServer) -> None:
    query, hits, replies = "car engine noise", make_hits(), []
    with chat.play(overlap_judge(replies)) as server:
        judge = LLMJudgeReranker(model_for(server), batch_size=3)
        top = judge.rerank(query, hits, k=len(hits))
        order = expected_order(query, hits)
        assert ids(top) == [hits[i].chunk_id for i in order]
        assert [h.score for h in top] == [overlap_grade(query, hits[i].text) / 10
                                         for i in order]
        assert ids(judge.rerank(query, hits, k=2)) == ids(top)[:2]
        assert judge.scores(query, hits) == [overlap_grade(query, h.text) / 10 for h in hits]
        requests = server.requests
    assert len(requests) == 3 * 3                           # ceil(7 / 3) per call, 3 calls
    assert [r["max_tokens"] for r in requests[:3]] == [16 + 8 * 3, 16 + 8 * 3, 16 + 8 * 1]
    assert "[1] " + hits[3].text in requests[1]["messages"][1]["content"]
    assert judge.usage.calls == 9 and judge.stats.requests == 9
    assert judge.stats.judged == 21 and judge.stats.unjudged == 0
    prompt = sum(approx_tokens(json.dumps(r["messages"])) for r in requests)
    completion = sum(approx_tokens(json.dumps({"role": "assistant", "content": c}))
                     for c in replies)
    assert (judge.usage.prompt_tokens, judge.usage.completion_tokens) == (prompt, completion)


def test_judge_truncates_and_flattens_passages(chat: ScriptedChatServer) -> None:
    long = "Engine\n\nnoise   " + "x" * 500 + " TAIL"
    with chat.play(overlap_judge([])) as server:
        judge = LLMJudgeReranker(model_for(server), max_passage_chars=20)
        judge.rerank("engine noise", make_hits([long, "short"]), k=2)
        user = server.requests[0]["messages"][1]["content"]
    assert "[1] Engine noise xxxxxxx ...\n" in user
    assert "TAIL" not in user and "[2] short" in user
    assert judge_messages("engine noise", [long, "short"], 20)[1]["content"] == user


def test_parse_grades_formats_and_rejections() -> None:
    reply = ("Here are the grades:\n[1] 7\n2: 3\n3 - 9.5\n4. 5\n**[5]**: 6/10\n"
             "Passage 6: grade: 8\n{\"7\": 2, \"8\": 11}\n[9] 1\n[9] 2\n[10] -1\n[12] 4\n1.5")
    assert parse_grades(reply, 11) == [7, 3, 9.5, 5, 6, 8, 2, None, None, None, None]
    assert parse_grades("", 2) == [None, None]
    assert parse_grades("[1] 4\n[1] 4", 1) == [4]          # an identical repeat is fine
    assert parse_grades("[1] -> 6\n2 => 1", 2) == [6, 1]
    assert parse_grades("3 > 1 > 2\n[2] > [3]", 3) == [None, None, None]   # not a grade


def test_judge_keeps_first_stage_positions_of_unjudged_hits(chat: ScriptedChatServer) -> None:
    hits = make_hits(["a", "b", "c", "d", "e"])
    # a=2, b missing, c=9 (given twice, same), d out of range, e=7, plus noise
    reply = "[1] 2\n[3] 9\nsome words\n[3] 9\n[4] 15\n[5] 7\n[6] 10"
    with chat.play([{"content": reply}, {"tool_calls": [("x", {})]}]) as server:
        judge = LLMJudgeReranker(model_for(server))
        top = judge.rerank("q", hits, k=5)
        assert judge.stats.judged == 3 and judge.stats.unjudged == 2
        # judged c, e, a fill positions 1, 3, 5; b and d stay at 2 and 4
        assert ids(top) == ["c2", "c1", "c4", "c3", "c0"]
        assert [h.score for h in top] == pytest.approx([0.9, 0.9, 0.7, 0.7, 0.2])
        nothing = judge.rerank("q", hits, k=3)              # a reply without text
        assert nothing == hits[:3]                          # as given, scores included


def test_judge_never_loses_or_duplicates_hits_on_random_replies(chat: ScriptedChatServer) -> None:
    rng = random.Random(7)
    pieces = ["[{n}] {g}", "{n}: {g}", "[{n}] grade {g}", "{g}", "[{n}]", "oops {n} {g}"]

    def noisy(body: dict) -> dict:
        lines = [rng.choice(pieces).format(n=rng.randint(0, 6), g=rng.randint(-3, 13))
                 for _ in range(rng.randint(0, 8))]
        return {"content": "\n".join(lines)}

    hits = make_hits()
    with chat.play(noisy) as server:
        judge = LLMJudgeReranker(model_for(server), batch_size=4, first_stage_weight=0.3)
        for _ in range(15):
            top = judge.rerank("q", hits, k=len(hits))
            assert sorted(ids(top)) == sorted(ids(hits))
            assert all(a.score >= b.score for a, b in zip(top, top[1:], strict=False))
    assert judge.stats.judged + judge.stats.unjudged == 15 * len(hits)


def test_judge_endpoint_errors_raise_or_fall_back(chat: ScriptedChatServer) -> None:
    hits = make_hits()
    with chat.play([{"status": 400, "message": "model not loaded"}]) as server:
        with pytest.raises(ModelError, match="LLM judge request failed.*model not loaded"):
            LLMJudgeReranker(model_for(server)).rerank("car", hits, k=3)
    script = [overlap_judge([]), {"status": 400, "message": "overloaded"}]
    with chat.play(script) as server:
        judge = LLMJudgeReranker(model_for(server), batch_size=4, on_error="fallback")
        top = judge.rerank("car engine", hits, k=len(hits))
    judged = sorted(range(4), key=lambda i: (-overlap_grade("car engine", hits[i].text), i))
    assert ids(top) == [hits[i].chunk_id for i in judged] + ids(hits[4:])
    assert judge.stats.failed_requests == 1 and judge.usage.calls == 1


def test_judge_blends_with_first_stage_scores(chat: ScriptedChatServer) -> None:
    query, hits = "car engine noise", make_hits()
    with chat.play(overlap_judge([])) as server:
        keep = LLMJudgeReranker(model_for(server), first_stage_weight=1.0)
        assert ids(keep.rerank(query, hits, k=7)) == ids(hits)
        half = LLMJudgeReranker(model_for(server), first_stage_weight=0.5)
        got = half.rerank(query, hits, k=7)
    first = [h.score for h in hits]
    norm = [(s - min(first)) / (max(first) - min(first)) for s in first]
    blended = [0.5 * overlap_grade(query, h.text) / 10 + 0.5 * n for h, n in zip(hits, norm,
                                                                                  strict=True)]
    order = sorted(range(len(hits)), key=lambda i: (-blended[i], i))
    assert ids(got) == [hits[i].chunk_id for i in order]
    assert [h.score for h in got] == pytest.approx([blended[i] for i in order])


def test_judge_rejects_bad_input() -> None:
    model = ChatModel("http://127.0.0.1:9/v1", "unused")
    with pytest.raises(TypeError, match="chat model"):
        LLMJudgeReranker(object())  # type: ignore[arg-type]
    for bad, match in [({"batch_size": 0}, "batch_size must be an int >= 1"),
                       ({"max_passage_chars": 0}, "max_passage_chars must be"),
                       ({"first_stage_weight": 1.5}, "first_stage_weight must be"),
                       ({"on_error": "ignore"}, "on_error must be one of raise, fallback"),
                       ({"reply_tokens": 0}, "reply_tokens must be")]:
        with pytest.raises(ValueError, match=match):
            LLMJudgeReranker(model, **bad)
    judge = LLMJudgeReranker(model)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        judge.rerank("q", make_hits(), k=0)
    with pytest.raises(TypeError, match="query must be a str"):
        judge.rerank(b"q", make_hits(), k=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hits must be Hit objects"):
        judge.rerank("q", ["text"], k=1)  # type: ignore[list-item]
    assert judge.rerank("q", [], k=3) == [] and judge.stats.requests == 0


# ----------------------------------------------------------------------------- cross-encoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ":"] + sorted(
    {w for t in TEXTS for w in re.findall(r"[a-z0-9]+", t.lower())} | {"noise", "why"})


def build_tiny_bert(folder: Path, num_labels: int = 1, tokenizer: bool = True) -> Path:
    transformers = pytest.importorskip("transformers")
    import torch

    folder.mkdir(parents=True)
    if tokenizer:   # positional: `vocab_file` in transformers 4, `vocab` in 5
        (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        tok = transformers.BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)
        assert tok.unk_token_id not in tok("car engine noise")["input_ids"]
        tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64,
                                     num_labels=num_labels, initializer_range=0.5)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("ce") / "tiny-bert")


def reference_logits(folder: Path, query: str, texts: list[str], max_length: int) -> list[float]:
    """Each pair alone (no padding), through transformers directly."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    result = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(query, text, truncation=True, max_length=max_length,
                              return_tensors="pt")
            result.append(float(model(**batch).logits[0, 0]))
    return result


def test_cross_encoder_scores_are_the_model_logits(tiny_bert: Path) -> None:
    query, hits = "why car engine noise", make_hits()
    reranker = CrossEncoderReranker(tiny_bert, batch_size=3)     # padded batches 3, 3, 1
    expected = reference_logits(tiny_bert, query, TEXTS, 512)
    assert reranker.scores(query, hits) == pytest.approx(expected, abs=1e-5)
    assert len(set(round(x, 4) for x in expected)) == len(expected)   # a real ordering
    order = sorted(range(len(hits)), key=lambda i: -expected[i])
    top = reranker.rerank(query, hits, k=4)
    assert ids(top) == [hits[i].chunk_id for i in order[:4]]
    assert [h.score for h in top] == pytest.approx([expected[i] for i in order[:4]], abs=1e-5)
    keep = CrossEncoderReranker(str(tiny_bert), first_stage_weight=1.0)
    assert ids(keep.rerank(query, hits, k=7)) == ids(hits)


def test_cross_encoder_truncates_to_max_length(tiny_bert: Path) -> None:
    query, text = "car engine", " ".join(TEXTS)
    short = CrossEncoderReranker(tiny_bert, max_length=12).scores(query, make_hits([text]))
    assert short == pytest.approx(reference_logits(tiny_bert, query, [text], 12), abs=1e-5)
    full = reference_logits(tiny_bert, query, [text], 64)
    assert abs(short[0] - full[0]) > 1e-4                      # the cut changed the input


def test_cross_encoder_reports_bad_model_dirs(tmp_path: Path, tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        CrossEncoderReranker(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no model: config.json is missing"):
        CrossEncoderReranker(tmp_path / "empty")
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((tiny_bert / "config.json")
                                                          .read_text())
    with pytest.raises(ValueError, match="holds no model weights"):
        CrossEncoderReranker(tmp_path / "config-only")
    with pytest.raises(TypeError, match="model_dir must be a str or Path"):
        CrossEncoderReranker(42)  # type: ignore[arg-type]
    for bad, match in [({"batch_size": 0}, "batch_size must be"),
                       ({"max_length": 1}, "max_length must be an int >= 2"),
                       ({"first_stage_weight": -0.1}, "first_stage_weight")]:
        with pytest.raises(ValueError, match=match):
            CrossEncoderReranker(tiny_bert, **bad)


def test_cross_encoder_refuses_models_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no tokenizer"):
        CrossEncoderReranker(build_tiny_bert(tmp_path / "nt", tokenizer=False))
    empty = build_tiny_bert(tmp_path / "empty-vocab", tokenizer=False)
    (empty / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    reranker = CrossEncoderReranker(empty)
    assert reranker.rerank("q", [], k=1) == []                    # nothing loaded yet
    with pytest.raises(ValueError, match="no vocabulary beyond its special tokens"):
        reranker.rerank("car", make_hits(), k=2)
    broken = build_tiny_bert(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot load a sequence-classification model"):
        CrossEncoderReranker(broken).load()
    two = CrossEncoderReranker(build_tiny_bert(tmp_path / "two", num_labels=2))
    with pytest.raises(ValueError, match=r"one output \(num_labels=1\), it has 2"):
        two.load()
