"""Retrieval over a `Store`: rank fusion, MMR diversification, a hybrid `Retriever` and a
sentence-level max-similarity reranker.

    from llmsys.rag.retrieval import MaxSimReranker, Retriever, doc_ranking, mmr

    retriever = Retriever(store, mode="hybrid", fusion="rrf", candidates=100, rrf_k=60)
    hits = retriever.search("separated flow heat transfer", k=10)     # -> [Hit, ...]
    hits = MaxSimReranker(store.embedder, first_stage_weight=0.3).rerank(query, hits, k=10)
    doc_ranking(hits)                      # {doc_id: score of its best chunk}: a TREC run row
    mmr(query_vec, hits, vectors, lambda_=0.7, k=5)                   # diverse top 5

Functions (every ranking is a list of `Hit`s, best first):

- `reciprocal_rank_fusion(rankings, k=60)`: score(chunk) = sum over the rankings holding it
  of 1 / (k + rank), ranks from 1. Sorted by fused score, ties by chunk id (ascending).
- `weighted_fusion(rankings, weights, normalization="minmax")`: each ranking's scores are
  min-max normalised to [0, 1] (all equal -> all 1; "none" keeps raw scores), multiplied by
  the ranking's weight and summed; a chunk absent from a ranking gets 0 from it.
- `mmr(query_vec, hits, vectors, lambda_, k)`: maximal marginal relevance: repeatedly picks
  the hit maximising lambda * cos(query, hit) - (1 - lambda) * max cos(hit, picked). The hits
  come back unchanged (scores included) in the order picked.
- `doc_ranking(hits)`: document id -> the best score among its chunks.

Fused hits keep the chunk fields of the hit seen first and carry the fused score.

`Retriever(store, mode, fusion, candidates, rrf_k, weights, feedback, mmr_lambda)`: "bm25"
and "dense" are the store's searches; "hybrid" takes the top `candidates` of both and fuses
them (RRF or weighted fusion with `weights` = (bm25, dense)), then cuts to k. With
`feedback=Feedback()` each side first runs a short search and searches again with the query
expanded from its results (RM3 for BM25, Rocchio for dense; `llmsys.rag.feedback`): three
more store queries, the largest gain measured on Cranfield (docs/benchmarks.md). With
`mmr_lambda` the k results are picked from the top `candidates` by `mmr` (stored chunk
vectors, query embedding), for diverse context rather than k near-duplicates.
`fuse(bm25_hits, dense_hits, k)` is the fusion step alone, for evaluating many settings on
cached first-stage results.

`MaxSimReranker(embedder, first_stage_weight=0.0)`: scores each hit by the highest cosine
between the query embedding and the embeddings of the hit's sentences (split at ., ! or ?
followed by white space, and at line breaks). With `first_stage_weight` w > 0 the result is
the weighted fusion of the max-sim ranking (weight 1 - w) and the first-stage ranking
(weight w). Use a `CachedEmbedder` so that sentences are embedded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llmsys.rag import chunking
from llmsys.rag.checks import check_choice, check_int
from llmsys.rag.feedback import Feedback, rm3_weights, rocchio
from llmsys.rag.store import Hit, Store

if TYPE_CHECKING:
    from llmsys.agent.memory import Embedder

__all__ = ["MaxSimReranker", "Retriever", "doc_ranking", "mmr", "reciprocal_rank_fusion",
           "rescored", "split_sentences", "weighted_fusion"]

Mode = Literal["bm25", "dense", "hybrid"]
Fusion = Literal["rrf", "weighted"]
Normalization = Literal["minmax", "none"]
MODES = ("bm25", "dense", "hybrid")
FUSIONS = ("rrf", "weighted")
NORMALIZATIONS = ("minmax", "none")


# ----------------------------------------------------------------------------- checks





def _check_weights(weights: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(weights)
    if len(values) != n:
        raise ValueError(f"weights must give one weight per ranking ({n}), got {values!r}")
    for w in values:
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite numbers >= 0, got {values!r}")
    return tuple(float(w) for w in values)


# ----------------------------------------------------------------------------- fusion

def _fused(scores: dict[str, float], first: dict[str, Hit]) -> list[Hit]:
    order = sorted(scores, key=lambda cid: (-scores[cid], cid))
    return [replace(first[cid], score=scores[cid]) for cid in order]


def _first_seen(rankings: Sequence[Sequence[Hit]]) -> dict[str, Hit]:
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for hit in ranking:
            first.setdefault(hit.chunk_id, hit)
    return first


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], k: int = 60) -> list[Hit]:
    """Fuse rankings by sum of 1 / (k + rank), ranks from 1; ties by chunk id."""
    check_int("k", k, 0)
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
    return _fused(scores, _first_seen(rankings))


def _normalised(ranking: Sequence[Hit], normalization: Normalization) -> dict[str, float]:
    raw = {hit.chunk_id: float(hit.score) for hit in ranking}
    if normalization == "none" or not raw:
        return raw
    low, high = min(raw.values()), max(raw.values())
    if high == low:
        return dict.fromkeys(raw, 1.0)
    return {cid: (s - low) / (high - low) for cid, s in raw.items()}


def weighted_fusion(rankings: Sequence[Sequence[Hit]], weights: Sequence[float],
                    normalization: Normalization = "minmax") -> list[Hit]:
    """Fuse rankings by the weighted sum of their (min-max normalised) scores; absent = 0."""
    check_choice("normalization", normalization, NORMALIZATIONS)
    values = _check_weights(weights, len(rankings))
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, values, strict=True):
        for cid, s in _normalised(ranking, normalization).items():
            scores[cid] = scores.get(cid, 0.0) + weight * s
    return _fused(scores, _first_seen(rankings))


def doc_ranking(hits: Sequence[Hit]) -> dict[str, float]:
    """Document id -> the best score among its chunks in `hits`."""
    best: dict[str, float] = {}
    for hit in hits:
        if hit.doc_id not in best or hit.score > best[hit.doc_id]:
            best[hit.doc_id] = float(hit.score)
    return best


# ----------------------------------------------------------------------------- MMR

def _unit_rows(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.where(norms == 0, 1.0, norms)


def mmr(query_vec: np.ndarray, hits: Sequence[Hit], vectors: np.ndarray,
        lambda_: float = 0.7, k: int = 10) -> list[Hit]:
    """Up to k hits picked by maximal marginal relevance (`vectors[i]` embeds `hits[i]`)."""
    check_int("k", k, 1)
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be between 0 and 1, got {lambda_!r}")
    vecs = _unit_rows(np.asarray(vectors, dtype=np.float64))
    if vecs.ndim != 2 or vecs.shape[0] != len(hits):
        raise ValueError(f"vectors must have one row per hit ({len(hits)}), "
                         f"got shape {vecs.shape}")
    relevance = vecs @ _unit_rows(np.asarray(query_vec, dtype=np.float64))
    picked: list[int] = []
    redundancy = np.full(len(hits), -np.inf)
    while len(picked) < min(k, len(hits)):
        penalty = np.where(np.isneginf(redundancy), 0.0, redundancy)
        gain = lambda_ * relevance - (1.0 - lambda_) * penalty
        gain[picked] = -np.inf
        best = int(np.argmax(gain))          # first maximum: ties keep the input order
        picked.append(best)
        redundancy = np.maximum(redundancy, vecs @ vecs[best])
    return [hits[i] for i in picked]


# ----------------------------------------------------------------------------- retriever

@dataclass(frozen=True)
class Retriever:
    """BM25, dense or hybrid (fused) search over a store; see the module docstring."""

    store: Store
    mode: Mode = "hybrid"
    fusion: Fusion = "rrf"
    candidates: int = 100
    rrf_k: int = 60
    weights: tuple[float, float] = (0.5, 0.5)
    feedback: Feedback | None = None
    mmr_lambda: float | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("fusion", self.fusion, FUSIONS)
        check_int("candidates", self.candidates, 1)
        check_int("rrf_k", self.rrf_k, 0)
        object.__setattr__(self, "weights", _check_weights(self.weights, 2))
        if self.feedback is not None and not isinstance(self.feedback, Feedback):
            raise TypeError(f"feedback must be a Feedback or None, got "
                            f"{type(self.feedback).__name__}")
        m = self.mmr_lambda
        if m is not None and (isinstance(m, bool) or not isinstance(m, int | float)
                              or not 0.0 <= m <= 1.0):
            raise ValueError(f"mmr_lambda must be a number in [0, 1] or None, got {m!r}")
        needs = []  # what RM3, Rocchio and MMR read from the store beyond the two searches
        if self.feedback is not None or m is not None:
            needs = ["embed", "vectors", "search_dense_vector", "term_counts",
                     "search_bm25_terms"]
        missing = [name for name in needs if not callable(getattr(self.store, name, None))]
        if missing:
            raise ValueError(f"{type(self.store).__name__} lacks {', '.join(missing)}: use the "
                             "SQLite Store for feedback and MMR, or leave them off")

    def search(self, query: str, k: int, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The top k chunks for `query` (restricted by `filter`, as in `Store`); with
        `mmr_lambda`, k picked by MMR from the top `candidates` of the ranking."""
        check_int("k", k, 1)
        dense_feedback = self.feedback is not None and self.feedback.dense
        vector = None  # embedded once when both the dense side and MMR (or Rocchio) need it
        if self.mmr_lambda is not None or (self.mode != "bm25" and dense_feedback):
            vector = self.store.embed([query])[0]
        if self.mmr_lambda is None:
            return self._ranked(query, vector, k, filter)
        hits = self._ranked(query, vector, max(k, self.candidates), filter)
        if not hits:
            return hits
        vectors = self.store.vectors([h.chunk_id for h in hits])
        return mmr(vector, hits, vectors, float(self.mmr_lambda), k)

    def _ranked(self, query: str, vector: np.ndarray | None, k: int,
                filter: dict[str, Any] | None) -> list[Hit]:
        if self.mode == "bm25":
            return self.search_bm25(query, k, filter)
        if self.mode == "dense":
            return self._dense(query, vector, k, filter)
        depth = max(k, self.candidates)
        return self.fuse(self.search_bm25(query, depth, filter),
                         self._dense(query, vector, depth, filter), k)

    def search_bm25(self, query: str, k: int, filter: dict[str, Any] | None = None
                    ) -> list[Hit]:
        """BM25, expanded by RM3 when `feedback` asks for it."""
        fb = self.feedback
        if fb is None or not fb.lexical:
            return self.store.search_bm25(query, k, filter)
        terms = self.store.analyzer.analyze(query)
        first = self.store.search_bm25(query, fb.docs, filter)
        weights = rm3_weights(self.store.term_counts, terms,
                              [(h.chunk_id, h.score) for h in first], fb)
        return self.store.search_bm25_terms(weights, k, filter) if weights else []

    def search_dense(self, query: str, k: int, filter: dict[str, Any] | None = None
                     ) -> list[Hit]:
        """Dense search, from a Rocchio-moved query vector when `feedback` asks for it."""
        check_int("k", k, 1)
        return self._dense(query, None, k, filter)

    def _dense(self, query: str, vector: np.ndarray | None, k: int,
               filter: dict[str, Any] | None) -> list[Hit]:
        """Dense search from `vector` if the query was embedded already, else from `query`."""
        fb = self.feedback
        if fb is None or not fb.dense:
            if vector is None:
                return self.store.search_dense(query, k, filter)
            return self.store.search_dense_vector(vector, k, filter)
        if vector is None:
            vector = self.store.embed([query])[0]
        first = self.store.search_dense_vector(vector, fb.dense_docs, filter)
        moved = rocchio(vector, self.store.vectors([h.chunk_id for h in first]),
                        fb.dense_weight)
        return self.store.search_dense_vector(moved, k, filter)

    def fuse(self, bm25_hits: Sequence[Hit], dense_hits: Sequence[Hit], k: int) -> list[Hit]:
        """The top k of the fusion of the first `candidates` hits of each list."""
        check_int("k", k, 1)
        lists = [list(bm25_hits[:self.candidates]), list(dense_hits[:self.candidates])]
        if self.fusion == "rrf":
            return reciprocal_rank_fusion(lists, self.rrf_k)[:k]
        return weighted_fusion(lists, self.weights)[:k]


# ----------------------------------------------------------------------------- reranker

def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (the chunkers' splitter), as strings."""
    return [text[start:end] for start, end in chunking.split_sentences(text)]


@dataclass(frozen=True)
class MaxSimReranker:
    """Reorders hits by max cosine between the query and their sentences (module docstring)."""

    embedder: Embedder
    first_stage_weight: float = 0.0

    def __post_init__(self) -> None:
        if not callable(getattr(self.embedder, "embed", None)):
            raise TypeError(f"MaxSimReranker needs an embedder with embed(texts), "
                            f"got {type(self.embedder).__name__}")
        w = self.first_stage_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 <= w <= 1.0:
            raise ValueError(f"first_stage_weight must be a number in [0, 1], got {w!r}")

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        """The max-sim score of each hit (0.0 for a hit without any sentence)."""
        sentences = [split_sentences(hit.text) for hit in hits]
        flat = [s for group in sentences for s in group]
        if not flat:
            return [0.0] * len(hits)
        vectors = np.asarray(self.embedder.embed([query, *flat]), dtype=np.float64)
        vectors = _unit_rows(vectors)
        sims = vectors[1:] @ vectors[0]
        result, at = [], 0
        for group in sentences:
            result.append(float(sims[at:at + len(group)].max()) if group else 0.0)
            at += len(group)
        return result

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The top k of `hits` reordered by max-sim (blended with the first-stage ranking)."""
        return rescored(hits, self.scores(query, hits), k, self.first_stage_weight)


def rescored(hits: Sequence[Hit], scores: Sequence[float], k: int,
             first_stage_weight: float = 0.0) -> list[Hit]:
    """The top k of `hits` by new `scores` (ties by chunk id), or, with a first-stage weight
    w > 0, by the weighted fusion of the new ranking (1 - w) and the given one (w): what
    every reranker returns."""
    check_int("k", k, 1)
    scored = [replace(hit, score=float(s)) for hit, s in zip(hits, scores, strict=True)]
    if first_stage_weight == 0.0:
        return sorted(scored, key=lambda h: (-h.score, h.chunk_id))[:k]
    w = float(first_stage_weight)
    return weighted_fusion([scored, list(hits)], (1.0 - w, w))[:k]
