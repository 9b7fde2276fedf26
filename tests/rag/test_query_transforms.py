"""Tests of llmsys.rag.query_transforms on a tiny store with a "concept" embedder (known
words and their synonyms share an axis) and a scripted chat server that answers from the
prompt: rewrites that swap words for synonyms, or a fixed hypothetical passage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmsys.agent.chat_model import ChatModel, ModelError
from llmsys.agent.scripted import Play, ScriptedChatServer
from llmsys.rag.chunking import Chunk
from llmsys.rag.query_transforms import (
    HYDE_SYSTEM,
    TransformingRetriever,
    hyde,
    multi_query,
    parse_rewrites,
)
from llmsys.rag.readers import SourceDocument
from llmsys.rag.retrieval import Retriever, reciprocal_rank_fusion
from llmsys.rag.store import Hit, Store

CONCEPTS = {"car": 0, "automobile": 0, "vehicle": 0, "engine": 1, "motor": 1,
            "flower": 2, "garden": 2, "plant": 2, "tree": 3, "forest": 3}
SYNONYMS = {"automobile": ["car", "vehicle"], "motor": ["engine", "engine"],
            "plant": ["flower", "tree"]}
DOCS = {"d1": "The car engine roars on the road.",
        "d2": "The zx81 manual has many pages.",
        "d3": "A garden full of flower beds.",
        "d4": "An old forest with a tall tree.",
        "d5": "Vehicle upkeep: change the motor oil, check the engine every year."}


class ConceptEmbedder:
    name = "concepts-qt"
    dim = 5

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                if word in CONCEPTS:
                    rows[i, CONCEPTS[word]] += 1.0
            rows[i, -1] = 0.05
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "qt.db", ConceptEmbedder())
    for doc_id, text in DOCS.items():
        s.upsert(SourceDocument(doc_id, text, None, "test", {}), [Chunk(text, 0, len(text))])
    yield s
    s.close()


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    """One scripted chat server for the module; each test runs its script with `play`."""
    with ScriptedChatServer([]) as server:
        yield server


def model_for(server: Play) -> ChatModel:
    return ChatModel(server.base_url, "scripted", max_retries=0)


def rewrite(query: str, choice: int) -> str:
    return " ".join(SYNONYMS.get(w, [w, w])[choice] for w in query.split())


def synonym_rewriter(body: dict) -> dict:
    """Rewrites with numbering, a preamble, an echo, a repeat and blank lines."""
    query = body["messages"][-1]["content"].removeprefix("Query: ")
    first, second = rewrite(query, 0), rewrite(query, 1)
    return {"content": f"Here are some queries:\n\n1. {first}\n2) \"{query.upper()}\"\n"
                       f"- {first}.\n\n3. **{second}**\n4. extra one\n"}


def docs_of(hits: list[Hit]) -> list[str]:
    return [h.doc_id for h in hits]


def same(a: list[Hit], b: list[Hit]) -> bool:
    """Same chunks in the same order with the same scores."""
    return ([h.chunk_id for h in a] == [h.chunk_id for h in b]
            and [h.score for h in a] == pytest.approx([h.score for h in b]))


# ----------------------------------------------------------------------------- multi-query

def test_multi_query_parses_rewrites_from_the_reply(chat: ScriptedChatServer) -> None:
    with chat.play(synonym_rewriter) as server:
        model = model_for(server)
        assert multi_query(model, "automobile motor", 2) == [
            "automobile motor", "car engine", "vehicle engine"]
        assert multi_query(model, "automobile motor", 5)[-1] == "extra one"
        request = server.requests[0]
    assert request["messages"][0]["content"].startswith("You rewrite search queries")
    assert "write 2 different search queries" in request["messages"][0]["content"]
    assert request["messages"][1]["content"] == "Query: automobile motor"


def test_parse_rewrites_handles_malformed_text() -> None:
    assert parse_rewrites("", "q", 3) == []
    assert parse_rewrites("\n  \n1.\n- \nQ:\n", "q", 3) == []
    assert parse_rewrites("Query 1: a b\nquery-level cache\n3.5 GHz\n[2] 'a b'", "x", 5) == [
        "a b", "query-level cache", "3.5 GHz"]
    assert parse_rewrites("Q?\n  q \nr", "q", 3) == ["r"]           # echoes dropped
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        parse_rewrites("a", "q", 0)


def test_multi_query_finds_what_the_plain_query_misses(chat: ScriptedChatServer,
                                                       store: Store) -> None:
    retriever = Retriever(store, "bm25", candidates=10, rrf_k=5)
    query = "automobile"
    assert retriever.search(query, 5) == []                         # no shared word
    with chat.play(synonym_rewriter) as server:
        transforming = TransformingRetriever(retriever, model_for(server), n_queries=2)
        got = transforming.search(query, 3)
        filtered = transforming.search(query, 3, filter={"doc_id": "d5"})
    queries = [query, "car", "vehicle"]
    expected = reciprocal_rank_fusion([retriever.search(q, 10) for q in queries], 5)[:3]
    assert same(got, expected)
    assert set(docs_of(got)) == {"d1", "d5"}
    assert docs_of(filtered) == ["d5"]
    assert transforming.usage.calls == 2 and transforming.usage.total_tokens > 0


def test_multi_query_with_an_unusable_reply_searches_the_query_alone(
        chat: ScriptedChatServer, store: Store) -> None:
    retriever = Retriever(store, "hybrid", candidates=4)
    script = [{"tool_calls": [("search", {"q": "x"})]}, {"content": "Sure:\n\n"}]
    with chat.play(script) as server:
        transforming = TransformingRetriever(retriever, model_for(server))
        for _ in script:
            got = transforming.search("flower garden", 2)
            expected = reciprocal_rank_fusion([retriever.search("flower garden", 4)], 60)[:2]
            assert same(got, expected)
            assert docs_of(got)[0] == "d3"


# ----------------------------------------------------------------------------- HyDE

PASSAGE = "Regular motor service keeps a vehicle engine healthy."


def hyde_writer(body: dict) -> dict:
    return {"content": f"Passage: {PASSAGE}\n"}


def test_hyde_returns_the_generated_passage(chat: ScriptedChatServer) -> None:
    with chat.play([hyde_writer, {"content": None}]) as server:
        assert hyde(model_for(server), "  how do I keep my ride running?  ") == PASSAGE
        assert hyde(model_for(server), "anything") == ""
        request = server.requests[0]
    assert request["messages"][0]["content"] == HYDE_SYSTEM.format(words=100)
    assert request["messages"][1]["content"] == "how do I keep my ride running?"


def test_hyde_searches_dense_with_the_passage_and_fuses_bm25(
        chat: ScriptedChatServer, store: Store) -> None:
    query = "how do I keep my ride running in the garden"
    hybrid = Retriever(store, "hybrid", candidates=5, rrf_k=10)
    dense = Retriever(store, "dense", candidates=5)
    with chat.play(hyde_writer) as server:
        model = model_for(server)
        joined = TransformingRetriever(hybrid, model, mode="hyde").search(query, 3)
        alone = TransformingRetriever(hybrid, model, mode="hyde", include_query=False)
        passage_only = alone.search(query, 3)
        dense_only = TransformingRetriever(dense, model, mode="hyde").search(query, 2)
        assert all(r["messages"][1]["content"] == query for r in server.requests)
    bm25 = store.search_bm25(query, 5)
    assert same(joined, hybrid.fuse(bm25, store.search_dense(f"{query}\n\n{PASSAGE}", 5), 3))
    assert same(passage_only, hybrid.fuse(bm25, store.search_dense(PASSAGE, 5), 3))
    assert same(dense_only, store.search_dense(f"{query}\n\n{PASSAGE}", 2))
    assert docs_of(dense_only) == ["d5", "d1"]
    assert not same(dense_only, store.search_dense(PASSAGE, 2))      # the query counted
    assert docs_of(bm25) == ["d3"]
    assert docs_of(store.search_dense(query, 2)) != ["d5", "d1"]    # the passage mattered


def test_hyde_keeps_the_retrievers_feedback(chat: ScriptedChatServer, store: Store) -> None:
    from llmsys.rag.feedback import Feedback
    query = "how do I keep my ride running in the garden"
    fed = Retriever(store, "hybrid", candidates=5, rrf_k=10,
                    feedback=Feedback(docs=2, terms=5, dense_docs=1))
    with chat.play(hyde_writer) as server:
        got = TransformingRetriever(fed, model_for(server), mode="hyde").search(query, 3)
    expected = fed.fuse(fed.search_bm25(query, 5), fed.search_dense(f"{query}\n\n{PASSAGE}", 5),
                        3)
    assert same(got, expected)


def test_hyde_with_an_empty_passage_uses_the_query(chat: ScriptedChatServer, store: Store) -> None:
    retriever = Retriever(store, "dense", candidates=5)
    with chat.play([{"content": "  "}]) as server:
        got = TransformingRetriever(retriever, model_for(server), mode="hyde").search(
            "garden tree", 3)
    assert same(got, store.search_dense("garden tree", 3))


# ----------------------------------------------------------------------------- errors

def test_model_errors_raise_or_fall_back(chat: ScriptedChatServer, store: Store) -> None:
    retriever = Retriever(store, "hybrid", candidates=5)
    error = {"status": 400, "message": "context too long"}
    with chat.play([error, error, error]) as server:
        model = model_for(server)
        with pytest.raises(ModelError, match="context too long"):
            TransformingRetriever(retriever, model).search("car", 2)
        for mode in ("multi-query", "hyde"):
            fallback = TransformingRetriever(retriever, model, mode=mode, on_error="fallback")
            assert same(fallback.search("car engine", 2), retriever.search("car engine", 2))


def test_bad_settings_and_input_are_rejected(store: Store) -> None:
    model = ChatModel("http://127.0.0.1:9/v1", "unused")
    retriever = Retriever(store)
    with pytest.raises(ValueError, match="mode must be one of multi-query, hyde"):
        TransformingRetriever(retriever, model, mode="rag-fusion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_queries must be an int >= 1"):
        TransformingRetriever(retriever, model, n_queries=0)
    with pytest.raises(ValueError, match="on_error must be one of raise, fallback"):
        TransformingRetriever(retriever, model, on_error="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'hyde' needs a 'dense' or 'hybrid' retriever"):
        TransformingRetriever(Retriever(store, "bm25"), model, mode="hyde")
    with pytest.raises(TypeError, match="retriever must be a Retriever"):
        TransformingRetriever(store, model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a chat model"):
        TransformingRetriever(retriever, "gpt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="include_query must be a bool"):
        TransformingRetriever(retriever, model, include_query=1)  # type: ignore[arg-type]
    transforming = TransformingRetriever(retriever, model)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        transforming.search("car", 0)
    with pytest.raises(ValueError, match="query must not be empty"):
        transforming.search("  ", 3)
    with pytest.raises(TypeError, match="query must be a str"):
        hyde(model, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        multi_query(model, "car", 0)
