"""Tests of pseudo-relevance feedback (llmsys.rag.feedback), the weighted BM25 search it uses
and the store methods behind it, each against a computation written out in the test."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmsys.rag.bm25 import Analyzer, BM25Index
from llmsys.rag.chunking import Chunk
from llmsys.rag.feedback import Feedback, rm3_weights, rocchio
from llmsys.rag.readers import SourceDocument
from llmsys.rag.retrieval import Retriever
from llmsys.rag.store import Store

DOCS = {"a": "car engine engine piston", "b": "engine piston cylinder", "c": "car road trip",
        "d": "flower garden", "e": "piston ring cylinder bore", "f": ""}


def index() -> BM25Index:
    idx = BM25Index()
    for doc_id, text in DOCS.items():
        idx.add(doc_id, text.split())
    return idx


class AxisEmbedder:
    """Words on fixed axes (unknown words on the last one), rows unit length."""

    name = "axis-test"
    dim = 6
    AXES = {"car": 0, "engine": 1, "piston": 2, "cylinder": 3, "flower": 4}

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i, self.AXES.get(word, self.dim - 1)] += 1.0
            rows[i, -1] += 0.1
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "f.db", AxisEmbedder(), analyzer=Analyzer(stopwords=None, stemmer=None))
    for doc_id, text in DOCS.items():
        chunks = [Chunk(text, 0, len(text))] if text else []
        s.upsert(SourceDocument(doc_id, text, None, "test", {}), chunks)
    yield s
    s.close()


# ----------------------------------------------------------------------------- BM25 index

def test_weighted_search_is_linear_in_the_weights() -> None:
    idx = index()
    tokens = ["engine", "piston", "piston", "unknown"]
    assert idx.search_weighted(Counter(tokens), 10) == idx.search(tokens, 10)
    single = {t: dict(idx.search_weighted({t: 1.0}, 10)) for t in ("engine", "piston")}
    mixed = dict(idx.search_weighted({"engine": 0.3, "piston": 1.7}, 10))
    for doc_id, score in mixed.items():
        expected = 0.3 * single["engine"].get(doc_id, 0) + 1.7 * single["piston"].get(doc_id, 0)
        assert score == pytest.approx(expected, rel=1e-12)
    for bad in (0.0, -1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(ValueError, match="weights must be finite numbers > 0"):
            idx.search_weighted({"engine": bad}, 5)


def test_term_counts() -> None:
    idx = index()
    assert idx.term_counts("a") == {"car": 1, "engine": 2, "piston": 1}
    assert idx.term_counts("f") == {}
    with pytest.raises(KeyError, match="not indexed"):
        idx.term_counts("zzz")


# ----------------------------------------------------------------------------- RM3, Rocchio

def test_rm3_weights_equal_the_formula() -> None:
    idx = index()
    fb = Feedback(docs=2, terms=3, original_weight=0.4)
    first = idx.search(["car"], 10)
    assert {d for d, _ in first} == {"a", "c"}
    scores = np.array([s for _, s in first[:2]])
    prior = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    relevance: Counter[str] = Counter()
    for (doc_id, _), p in zip(first[:2], prior, strict=True):
        words = DOCS[doc_id].split()
        for word, count in Counter(words).items():
            relevance[word] += p * count / len(words)
    top = sorted(relevance.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    total = sum(p for _, p in top)
    expected = {"car": 0.4}
    for word, p in top:
        expected[word] = expected.get(word, 0.0) + 0.6 * p / total
    got = rm3_weights(idx.term_counts, ["car"], first, fb)
    assert got.keys() == expected.keys()
    for word in got:
        assert got[word] == pytest.approx(expected[word], rel=1e-12)
    assert sum(got.values()) == pytest.approx(1.0)


def test_rm3_leaves_the_query_alone_when_it_cannot_expand() -> None:
    idx = index()
    assert rm3_weights(idx.term_counts, ["car", "car"], [], Feedback()) == {"car": 2}
    assert rm3_weights(idx.term_counts, [], [("a", 1.0)], Feedback()) == {}
    off = Feedback(original_weight=1.0)
    assert rm3_weights(idx.term_counts, ["car"], [("a", 1.0)], off) == {"car": 1}
    # an empty document in the feedback set adds nothing (and does not divide by zero)
    got = rm3_weights(idx.term_counts, ["car"], [("f", 2.0), ("c", 1.0)], Feedback(docs=2))
    assert set(got) == {"car", "road", "trip"}


def test_rocchio_equals_the_formula() -> None:
    q = np.array([3.0, 4.0, 0.0])
    vecs = np.array([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
    expected = q / 5 + 0.5 * np.array([0.5, 0.0, 0.5])
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(rocchio(q, vecs, 0.5), expected, rtol=1e-6)
    np.testing.assert_allclose(rocchio(q, np.zeros((0, 3)), 0.5), q / 5, rtol=1e-6)
    assert rocchio(q, vecs, 0.5).dtype == np.float32


@pytest.mark.parametrize("field, value", [("docs", -1), ("terms", 1.5), ("dense_docs", True),
                                          ("original_weight", 1.5), ("dense_weight", -0.1),
                                          ("dense_weight", math.nan)])
def test_feedback_rejects_bad_settings(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Feedback.{field}"):
        Feedback(**{field: value})


# ----------------------------------------------------------------------------- store

def test_store_vector_and_weighted_searches_equal_the_plain_ones(store: Store) -> None:
    for query in ("engine piston", "car", "flower garden"):
        vector = store.embedder.embed([query])[0]
        assert store.search_dense_vector(vector, 4) == store.search_dense(query, 4)
        assert store.search_bm25_terms(Counter(query.split()), 4) == store.search_bm25(query, 4)
        limited = {"doc_id": ["b", "e"]}
        assert store.search_dense_vector(vector, 4, limited) == store.search_dense(query, 4,
                                                                                   limited)
    hits = store.search_dense("piston", 3)
    np.testing.assert_array_equal(store.vectors([h.chunk_id for h in hits]),
                                  store.embedder.embed([h.text for h in hits]))
    assert store.term_counts(hits[0].chunk_id) == Counter(hits[0].text.split())
    with pytest.raises(ValueError, match="vector must be 6 finite numbers"):
        store.search_dense_vector(np.zeros(5), 3)
    with pytest.raises(KeyError, match="no chunk"):
        store.vectors(["nope"])


def test_upsert_uses_given_vectors(store: Store) -> None:
    text = "cylinder bore engine"
    document = SourceDocument("g", text, None, "test", {})
    chunks = [Chunk(text, 0, len(text))]
    from llmsys.rag.store import chunk_id
    vector = store.embedder.embed(["flower"])[0]   # deliberately not the text's embedding
    calls = len(store.embedder.calls)
    store.upsert(document, chunks, {chunk_id("g", text, 0, len(text)): vector})
    assert len(store.embedder.calls) == calls      # nothing embedded
    np.testing.assert_array_equal(store.vectors([chunk_id("g", text, 0, len(text))])[0], vector)
    assert store.check().ok
    assert store.content_hash("g") == document.content_hash and store.content_hash("x") is None
    assert store.chunk_ids("g") == {chunk_id("g", text, 0, len(text))}


# ----------------------------------------------------------------------------- retriever

def test_retriever_feedback_is_the_two_pass_search(store: Store) -> None:
    fb = Feedback(docs=2, terms=4, original_weight=0.5, dense_docs=2, dense_weight=0.7)
    query = "car"
    first = store.search_bm25(query, 2)
    weights = rm3_weights(store.term_counts, [query], [(h.chunk_id, h.score) for h in first], fb)
    expected_bm25 = store.search_bm25_terms(weights, 5)
    vector = store.embedder.embed([query])[0]
    top = store.search_dense_vector(vector, 2)
    moved = rocchio(vector, store.vectors([h.chunk_id for h in top]), 0.7)
    expected_dense = store.search_dense_vector(moved, 5)
    retriever = Retriever(store, "hybrid", candidates=5, feedback=fb)
    assert retriever.search_bm25(query, 5) == expected_bm25
    assert retriever.search_dense(query, 5) == expected_dense
    assert retriever.search(query, 5) == retriever.fuse(expected_bm25, expected_dense, 5)
    # expansion reaches a document that shares no word with the query
    plain_docs = {h.doc_id for h in store.search_bm25(query, 5)}
    assert "b" not in plain_docs and "b" in {h.doc_id for h in expected_bm25}
    with pytest.raises(TypeError, match="feedback must be a Feedback"):
        Retriever(store, feedback={"docs": 3})  # type: ignore[arg-type]


def test_retriever_mmr_picks_from_the_candidates(store: Store) -> None:
    from llmsys.rag.retrieval import mmr
    plain = Retriever(store, "hybrid", candidates=6)
    diverse = Retriever(store, "hybrid", candidates=6, mmr_lambda=0.3)
    candidates = plain.search("engine piston cylinder", 6)
    expected = mmr(store.embed(["engine piston cylinder"])[0], candidates,
                   store.vectors([h.chunk_id for h in candidates]), 0.3, 3)
    got = diverse.search("engine piston cylinder", 3)
    assert got == expected and got != candidates[:3]
    assert Retriever(store, "hybrid", mmr_lambda=1.0).search("car", 2) == plain.search("car", 2)
    with pytest.raises(ValueError, match="mmr_lambda must be a number in"):
        Retriever(store, mmr_lambda=1.5)
