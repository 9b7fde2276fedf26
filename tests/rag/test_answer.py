"""Tests of llmsys.rag.answer and llmsys.rag.search_tool: a real Store (Markdown and text files
through the readers and a chunker, a hashed bag-of-words embedder) and a scripted chat model
over loopback HTTP. Rankings are checked against the retriever itself, offsets against the
documents as read, headings against the readers' sections."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apsw")
pytest.importorskip("sqlite_vec")
pytest.importorskip("Stemmer")
pytest.importorskip("openai")

from llmsys.agent.agent import Agent, EndState  # noqa: E402
from llmsys.agent.chat_model import ChatModel, ModelError  # noqa: E402
from llmsys.agent.scripted import Play, ScriptedChatServer  # noqa: E402
from llmsys.rag.answer import (  # noqa: E402
    RAG,
    REFUSAL,
    SYSTEM_PROMPT,
    TRUNCATION_NOTE,
    answer,
    format_source,
    is_refusal,
    parse_citations,
)
from llmsys.rag.chunking import Chunk, RecursiveChunker, SentenceWindowChunker  # noqa: E402
from llmsys.rag.readers import SourceDocument, read_path  # noqa: E402
from llmsys.rag.retrieval import MaxSimReranker, Retriever  # noqa: E402
from llmsys.rag.search_tool import NO_RESULTS, rag_search_tool  # noqa: E402
from llmsys.rag.store import Store  # noqa: E402

FILES = {
    "guide.md": "# Guide\n\nThe widget is a small tool for drawing charts.\n\n## Install\n\n"
                "Run pip install widget to install the widget package.\n\n## Configure\n\n"
                "Edit the widget.toml file to configure colors and fonts of the widget.\n",
    "history.md": "# History\n\nThe widget was invented in 1999 by Ada in a small lab.\n",
    "fruit.txt": "Bananas are yellow fruit. Apples are red or green fruit.\n",
}


class WordsEmbedder:
    """Hashed bag of words (lowercased \\w+ tokens) plus a small constant axis; rows are
    L2-normalised float32. Deterministic and fast."""

    name = "words-answer-test"
    dim = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                rows[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % (self.dim - 1)] += 1
            rows[i, -1] = 0.01
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, SourceDocument]:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return {doc.doc_id: doc for doc in read_path(folder)}


@pytest.fixture
def store(tmp_path: Path, corpus: dict[str, SourceDocument]) -> Store:
    s = Store(tmp_path / "rag.db", WordsEmbedder())
    chunker = RecursiveChunker(max_tokens=20)
    for doc in corpus.values():
        s.upsert(doc, chunker.split(doc.text))
    yield s
    s.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[ScriptedChatServer]:
    """One scripted chat server for the module; each test runs its script with `play`."""
    with ScriptedChatServer([]) as server:
        yield server


def model_for(server: Play, **kwargs) -> ChatModel:
    return ChatModel(server.base_url, "scripted", **kwargs)


def user_prompt(body: dict) -> str:
    return body["messages"][-1]["content"]


QUESTION = "How do I install the widget package?"


# ----------------------------------------------------------------------------- prompt, citations

def test_prompt_holds_numbered_sources_in_retrieval_order(shared: ScriptedChatServer, store: Store,
                                                          corpus: dict) -> None:
    retriever = Retriever(store, mode="dense")
    hits = retriever.search(QUESTION, 3)
    with shared.play([{"content": "Run pip install widget [1]."}]) as server:
        result = RAG(retriever, model_for(server), k=3).answer(QUESTION)
    (body,) = server.requests
    system, user = body["messages"][0]["content"], user_prompt(body)
    assert system == SYSTEM_PROMPT and REFUSAL in system and "[n]" not in system
    assert [s.chunk_id for s in result.sources] == [h.chunk_id for h in hits]
    positions = []
    for n, h in enumerate(hits, start=1):
        doc = corpus[h.doc_id]
        header = f"[{n}] {doc.title or h.doc_id} ({doc.source}"
        block = user.index(header)
        assert user[block:].split("\n", 1)[1].startswith(h.text)   # the text right after
        positions.append(block)
    assert positions == sorted(positions)
    assert user.startswith("Sources:\n\n[1] ") and user.endswith(f"Question: {QUESTION}")
    assert result.usage.calls == 1 and result.usage.prompt_tokens > 0


def test_citations_map_to_documents_and_offsets(shared: ScriptedChatServer, store: Store,
                                                corpus: dict) -> None:
    retriever = Retriever(store, mode="hybrid")
    hits = retriever.search(QUESTION, 4)
    reply = "Install it with pip [1]. Colors live in widget.toml [1, 3][2]."
    with shared.play([{"content": reply}]) as server:
        result = answer(QUESTION, retriever, model_for(server), k=4)
    assert not result.refused and result.invalid_citations == []
    assert [c.number for c in result.citations] == [1, 3, 2]
    for c in result.citations:
        h, doc = hits[c.number - 1], corpus[hits[c.number - 1].doc_id]
        assert (c.chunk_id, c.doc_id, c.start, c.end) == (h.chunk_id, h.doc_id, h.start, h.end)
        assert doc.text[c.start:c.end] == c.text == h.text
        assert (c.title, c.source) == (doc.title, doc.source)
        section = doc.locate(c.start)
        assert c.headings == (section.headings if section else ())
    assert json.loads(json.dumps(result.to_dict()))["citations"][0]["number"] == 1


def test_page_and_metadata_title_reach_prompt_and_citation(shared: ScriptedChatServer,
                                                           tmp_path: Path) -> None:
    text = "Page two says the pump runs at 3000 rpm."
    with Store(tmp_path / "p.db", WordsEmbedder()) as store:
        store.upsert(SourceDocument("manual.pdf", text, "Pump manual", "/m/manual.pdf", {}),
                     [Chunk(text, 0, len(text), {"page": 2})])
        with shared.play([{"content": "3000 rpm [1]."}]) as server:
            result = RAG(Retriever(store, mode="bm25"), model_for(server)).answer("pump rpm")
    assert "[1] Pump manual (/m/manual.pdf; page 2)\n" + text in user_prompt(server.requests[0])
    (c,) = result.citations
    assert (c.page, c.title, c.source, c.text) == (2, "Pump manual", "/m/manual.pdf", text)


@pytest.mark.parametrize(("text", "numbers"), [
    ("a [1] b [2]", [1, 2]), ("a [1, 3]", [1, 3]), ("a [1][2] b [1]", [1, 2]),
    ("a [2; 4]", [2, 4]), ("a [1-3]", [1, 2, 3]), ("see [Source 2] and [sources 1 and 3]",
                                                    [2, 1, 3]),
    ("no markers [a] [] (1)", []), ("[ 7 ]", [7]), ("[5-2]", [5, 2])])
def test_parse_citations(text: str, numbers: list[int]) -> None:
    assert parse_citations(text) == numbers


def test_invalid_markers_are_reported_not_cited(shared: ScriptedChatServer, store: Store) -> None:
    with shared.play([{"content": "Pip [1][7]. Also [0] and [2, 9]."}]) as server:
        result = RAG(Retriever(store, mode="dense"), model_for(server), k=2).answer(QUESTION)
    assert len(result.sources) == 2
    assert [c.number for c in result.citations] == [1, 2]
    assert result.invalid_citations == [7, 0, 9]


# ----------------------------------------------------------------------------- refusals

def test_refuses_without_model_call_below_min_score(shared: ScriptedChatServer,
                                                    store: Store) -> None:
    question = "quantum chromodynamics lattice gluon"
    best = store.search_dense(question, 1)[0].score
    assert best < 0.5                                  # the reference: nothing relevant
    with shared.play([]) as server:
        result = RAG(Retriever(store, mode="dense"), model_for(server),
                     min_score=0.5).answer(question)
    assert server.requests == []
    assert result.refused and result.sources == [] and result.citations == []
    assert result.text.startswith(REFUSAL) and result.usage.calls == 0
    assert "dense cosine" in result.refusal_reason and "0.5" in result.refusal_reason
    assert f"{best:.4g}" in result.refusal_reason


def test_min_score_keeps_only_hits_at_or_above_it(shared: ScriptedChatServer, store: Store) -> None:
    retriever = Retriever(store, mode="dense")
    hits = retriever.search(QUESTION, 5)
    threshold = (hits[0].score + hits[1].score) / 2     # only the best hit passes
    with shared.play([{"content": "Pip [1]."}]) as server:
        result = RAG(retriever, model_for(server), k=5, min_score=threshold).answer(QUESTION)
    assert [s.chunk_id for s in result.sources] == [hits[0].chunk_id]


def test_min_similarity_gates_hybrid_hits_by_their_embedding(shared: ScriptedChatServer,
                                                             store: Store) -> None:
    retriever = Retriever(store, mode="hybrid")
    hits = retriever.search(QUESTION, 5)
    query = store.embedder.embed([QUESTION])[0]
    cosines = store.embedder.embed([h.text for h in hits]) @ query   # unit rows: the reference
    threshold = float(np.sort(cosines)[-2] + np.sort(cosines)[-1]) / 2  # only the closest
    with shared.play([{"content": "Pip [1]."}]) as server:
        result = RAG(retriever, model_for(server), k=5, min_similarity=threshold
                     ).answer(QUESTION)
    assert [s.chunk_id for s in result.sources] == [hits[int(np.argmax(cosines))].chunk_id]
    with shared.play([]) as server:
        refused = RAG(retriever, model_for(server), k=5, min_similarity=float(cosines.max())
                      + 0.01).answer(QUESTION)
    assert server.requests == [] and refused.refused
    assert f"{float(cosines.max()):.3f}" in refused.refusal_reason
    with pytest.raises(ValueError, match="min_similarity needs the store"):
        RAG(SearchOnly(retriever), model_for(server), min_similarity=0.3)


class SearchOnly:
    """A retriever without a `.store`."""

    def __init__(self, retriever: Retriever) -> None:
        self.search = retriever.search


def test_refuses_when_nothing_is_retrieved(shared: ScriptedChatServer, tmp_path: Path,
                                           store: Store) -> None:
    with shared.play([]) as server:
        bm25 = RAG(Retriever(store, mode="bm25"), model_for(server)).answer("zzyzx qwerty")
        with Store(tmp_path / "empty.db", WordsEmbedder()) as empty:
            dense = answer("anything at all?", Retriever(empty, mode="dense"), model_for(server))
    assert server.requests == []
    for result in (bm25, dense):
        assert result.refused and "Nothing was retrieved" in result.refusal_reason


def test_model_refusal_is_detected(shared: ScriptedChatServer, store: Store) -> None:
    reply = "  " + REFUSAL.upper().rstrip(".") + "  "
    with shared.play([{"content": reply}]) as server:
        result = RAG(Retriever(store, mode="dense"), model_for(server)).answer("Who is Bob?")
    assert len(server.requests) == 1 and result.refused and result.sources
    assert result.refusal_reason == "The model found no answer in the sources."
    assert is_refusal(f"Sorry. {REFUSAL}") and not is_refusal("I can answer this [1].")


def test_reranker_order_and_its_score_for_min_score(shared: ScriptedChatServer,
                                                    store: Store) -> None:
    retriever = Retriever(store, mode="hybrid")
    reranker = MaxSimReranker(WordsEmbedder())
    expected = reranker.rerank(QUESTION, retriever.search(QUESTION, 8), 2)
    with shared.play([{"content": "Pip [1]."}]) as server:
        result = RAG(retriever, model_for(server), k=2, reranker=reranker).answer(QUESTION)
        refused = RAG(retriever, model_for(server), k=2, reranker=reranker,
                      min_score=1.01).answer(QUESTION)
    assert [s.chunk_id for s in result.sources] == [h.chunk_id for h in expected]
    assert [s.score for s in result.sources] == [h.score for h in expected]
    assert refused.refused and "MaxSimReranker score" in refused.refusal_reason
    assert len(server.requests) == 1


# ----------------------------------------------------------------------------- context budget

def test_budget_drops_whole_sources_in_order(shared: ScriptedChatServer, store: Store,
                                             corpus: dict) -> None:
    retriever = Retriever(store, mode="dense")
    with shared.play([{"content": "a [1]"}] * 2) as server:
        full = RAG(retriever, model_for(server), k=3).answer(QUESTION)
        blocks = [format_source(s) for s in full.sources]
        budget = len(blocks[0]) + 2 + len(blocks[1]) + len(blocks[2]) // 2
        cut = RAG(retriever, model_for(server), k=3, max_context_chars=budget).answer(QUESTION)
    assert [s.chunk_id for s in cut.sources] == [s.chunk_id for s in full.sources[:2]]
    assert cut.omitted_sources == 1
    for s in cut.sources:
        assert not s.truncated and corpus[s.doc_id].text[s.start:s.end] == s.text
    user = user_prompt(server.requests[1])
    assert blocks[0] in user and blocks[1] in user and full.sources[2].text not in user
    assert len(user.split("\n\nQuestion:")[0]) - len("Sources:\n\n") <= budget


def test_budget_cuts_a_lone_first_source_visibly(shared: ScriptedChatServer,
                                                 tmp_path: Path) -> None:
    text = " ".join(f"The pump number {i} needs oil every week." for i in range(12))
    doc = SourceDocument("pumps.txt", text, None, "/docs/pumps.txt", {})
    with Store(tmp_path / "t.db", WordsEmbedder()) as store:
        store.upsert(doc, [Chunk(text, 0, len(text))])
        retriever = Retriever(store, mode="dense")
        with shared.play([{"content": "a [1]"}] * 2) as server:
            whole = RAG(retriever, model_for(server)).answer("pump oil").sources[0]
            header = len(format_source(whole)) - len(whole.text)
            budget = header + len(TRUNCATION_NOTE) + 1 + 100    # room for 100 characters
            result = RAG(retriever, model_for(server), max_context_chars=budget).answer(
                "pump oil")
            with pytest.raises(ValueError, match="max_context_chars=10 is too small"):
                RAG(retriever, model_for(server), max_context_chars=10).answer("pump oil")
    (s,) = result.sources
    assert s.truncated and not whole.truncated and whole.text == text
    assert 50 < len(s.text) <= 100 and text.startswith(s.text) and text[len(s.text)] == " "
    assert (s.start, s.end) == (0, len(s.text)) and text[s.start:s.end] == s.text
    user = user_prompt(server.requests[1])
    assert f"{s.text}\n{TRUNCATION_NOTE}\n\nQuestion:" in user
    assert len(format_source(s)) <= budget


def test_sentence_windows_are_shown_with_their_offsets(shared: ScriptedChatServer,
                                                       tmp_path: Path) -> None:
    text = ("The lab opened in May. The pump broke on Monday. Ada fixed the pump quickly. "
            "Lunch was late.")
    doc = SourceDocument("log.txt", text, None, "/logs/log.txt", {})
    with Store(tmp_path / "w.db", WordsEmbedder()) as store:
        store.upsert(doc, SentenceWindowChunker(window=1).split(text))
        with shared.play([{"content": "Ada [1]."}]) as server:
            result = RAG(Retriever(store, mode="bm25"), model_for(server), k=1).answer(
                "who fixed the pump quickly")
        observation = rag_search_tool(Retriever(store, mode="bm25"), k=1).run(
            {"query": "who fixed the pump quickly"})
    (s,) = result.sources
    assert s.text == "The pump broke on Monday. Ada fixed the pump quickly. Lunch was late."
    assert text[s.start:s.end] == s.text and result.citations[0].text == s.text
    assert observation.endswith(f"characters {s.start}-{s.end})\n{s.text}")  # the same window


# ----------------------------------------------------------------------------- errors

def test_endpoint_failures_raise_model_error(shared: ScriptedChatServer, store: Store) -> None:
    retriever = Retriever(store, mode="dense")
    with shared.play([{"status": 400, "message": "context too long"}]) as server:
        with pytest.raises(ModelError, match="context too long") as info:
            RAG(retriever, model_for(server)).answer(QUESTION)
    assert info.value.status == 400 and QUESTION in str(info.value)
    with socket.socket() as sock:                      # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = ChatModel(f"http://127.0.0.1:{port}/v1", "none", max_retries=0, timeout_s=5)
    with pytest.raises(ModelError, match="answer generation failed"):
        RAG(retriever, dead).answer(QUESTION)
    with shared.play([{"content": "   "}]) as server:
        with pytest.raises(ModelError, match="returned no text"):
            RAG(retriever, model_for(server)).answer(QUESTION)


def test_bad_configuration_is_rejected(store: Store) -> None:
    retriever = Retriever(store, mode="dense")
    model = ChatModel("http://127.0.0.1:9/v1", "unused")
    cases = [({"k": 0}, ValueError, "k must be an int >= 1"),
             ({"max_context_chars": 0}, ValueError, "max_context_chars must be"),
             ({"min_score": "high"}, ValueError, "min_score must be a number"),
             ({"k": 5, "fetch_k": 3}, ValueError, "fetch_k must be an int >= 5"),
             ({"reranker": object()}, TypeError, "reranker must have rerank")]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            RAG(retriever, model, **kwargs)
    with pytest.raises(TypeError, match="retriever must have search"):
        RAG(object(), model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a ChatModel"):
        RAG(retriever, "gpt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        RAG(retriever, model).answer("  ")


# ----------------------------------------------------------------------------- search tool

def test_search_tool_through_the_agent(shared: ScriptedChatServer,
                                       store: Store, corpus: dict) -> None:
    retriever = Retriever(store, mode="dense")
    hits = retriever.search("install widget", 2)

    def final(body: dict) -> dict:
        observation = [m["content"] for m in body["messages"] if m["role"] == "tool"][0]
        return {"content": f"Found: {observation.splitlines()[0]}"}

    search = rag_search_tool(retriever, k=2)
    with shared.play([{"tool_calls": [("search", {"query": "install widget"})]},
                     final]) as server:
        result = Agent(model_for(server), [search]).run("How to install?")
    assert result.end_state is EndState.FINAL_ANSWER
    assert server.requests[0]["tools"][0]["function"]["name"] == "search"
    assert "query" in server.requests[0]["tools"][0]["function"]["parameters"]["properties"]
    observation = result.tool_calls[0]["result"]
    blocks = observation.split("\n\n[")
    assert len(blocks) == len(hits) == 2
    for n, (block, h) in enumerate(zip(blocks, hits, strict=True), start=1):
        doc = corpus[h.doc_id]
        header, text = block.lstrip("[").split("\n", 1)
        assert header.startswith(f"{n}] {doc.title or h.doc_id} (source: {doc.source}")
        assert header.endswith(f"characters {h.start}-{h.end})")
        assert text == h.text == doc.text[h.start:h.end]
    assert result.final_answer == f"Found: {blocks[0].splitlines()[0]}"


def test_search_tool_no_results_blank_query_and_cut(shared: ScriptedChatServer,
                                                    store: Store) -> None:
    search = rag_search_tool(Retriever(store, mode="bm25"), k=3, max_passage_chars=10)
    assert search.name == "search"
    assert search.run({"query": "zzyzx qwerty"}) == NO_RESULTS
    assert re.search(r"\n\[\.\.\. \d+ more characters\]", search.run({"query": "widget"}))
    with shared.play([{"tool_calls": [("search", {"query": " "})]},
                     {"content": "none"}]) as server:
        result = Agent(model_for(server), [search]).run("search nothing")
    assert result.tool_calls[0]["error"]
    assert "query must not be blank" in result.tool_calls[0]["result"]
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        rag_search_tool(Retriever(store), k=0)
    with pytest.raises(TypeError, match="retriever must have search"):
        rag_search_tool(object())  # type: ignore[arg-type]
