"""BM25 lexical retrieval: a text analyzer and an incremental inverted index.

    analyzer = Analyzer()                          # regex words, lowercase, stop words, Snowball
    index = BM25Index(BM25Params(k1=1.2, b=0.75))  # method "lucene" by default
    index.add("doc-1", analyzer.analyze("Heat transfer in separated flow."))
    index.add("doc-2", analyzer.analyze("Boundary layers at hypersonic speed."))
    index.search(analyzer.analyze("separated flow"), k=10)   # -> [("doc-1", 0.630...)]
    index.search(analyzer.analyze("hypersonic flow"), k=10, allowed={"doc-2"})  # a filter
    index.remove("doc-1")                                    # statistics updated exactly

The index keeps only term statistics -- document lengths and postings term -> {doc: tf} --
and computes every score at query time, so documents can be added and removed at any time
and the parameters can be changed without rebuilding. `doc_lengths()` and `postings()` give
those statistics in plain dicts and `BM25Index.from_postings` rebuilds an index from them, so
a store can keep them in its own tables.

Analysis matches the default pipeline of the bm25s library: words are the matches of
`(?u)\\b\\w\\w+\\b` (two or more word characters) in the lowercased text, the 33 English stop
words of `ENGLISH_STOPWORDS` are dropped, and the rest are stemmed with Snowball (PyStemmer,
imported when first needed).

Scores, with N documents, df(t) documents containing term t, tf its count in document d,
dl the length of d in tokens and avgdl the mean length (all taken over the whole index):

    score(d, q) = sum over query tokens t known to the index of idf(t) * tfc(tf, dl)
    norm = 1 - b + b * dl / avgdl

    method     idf(t)                                  tfc(tf, dl)
    lucene     ln(1 + (N - df + 0.5) / (df + 0.5))     tf / (tf + k1 * norm)
    robertson  ln(max(1, (N - df + 0.5) / (df + 0.5))) tf / (tf + k1 * norm)
    atire      ln(N / df)                              tf * (k1 + 1) / (tf + k1 * norm)
    bm25l      ln((N + 1) / (df + 0.5))                (k1 + 1) * (c + delta) / (k1 + c + delta),
                                                       with c = tf / norm
    bm25+      ln((N + 1) / df)                        tf * (k1 + 1) / (tf + k1 * norm) + delta

These are the formulas of bm25s 0.3 (note that its "lucene" and "robertson" differ only in the
idf, and neither has the constant factor (k1 + 1), which does not change the ranking). A query
token that appears twice counts twice, as in bm25s; tokens the index has never seen are
ignored. For bm25l and bm25+ with delta > 0, tfc(0, dl) > 0 (whatever dl), so every
document gets a share of every query term; `score` includes it for any document, while
`search` only ranks the documents that contain at least one query term (they always outscore
the others). `search` drops documents whose score is not above zero (robertson gives terms in
over half the documents idf 0, atire gives idf 0 to terms in every document).

Differences from bm25s: k1 defaults to 1.2 (bm25s: 1.5), scores are float64 (bm25s defaults
to float32), ties are broken by doc id ascending as strings (bm25s leaves their order
arbitrary), `search` never pads the result with non-matching documents, and `k` may exceed
the number of documents. The index is not thread-safe; callers serialise access.
"""

from __future__ import annotations

import gc
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")

_stemmers = threading.local()  # PyStemmer objects are not thread-safe: one per thread


def _stemmer(language: str):
    """The Snowball stemmer for `language`, created once per thread."""
    cache = getattr(_stemmers, "by_language", None)
    if cache is None:
        cache = _stemmers.by_language = {}
    if language not in cache:
        cache[language] = _import_stemmer().Stemmer(language)
    return cache[language]


def _import_stemmer():
    try:
        import Stemmer
    except ImportError as e:
        raise ImportError("stemming needs PyStemmer: pip install 'llmsys[rag]'") from e
    return Stemmer


@dataclass(frozen=True)
class Analyzer:
    """Turns text into index terms. `stemmer` is a Snowball language name (as listed by
    PyStemmer, e.g. "english", "french") or None; `stopwords` None keeps every word."""

    stopwords: frozenset[str] | None = ENGLISH_STOPWORDS
    stemmer: str | None = "english"
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.stopwords is not None and not (
            isinstance(self.stopwords, frozenset)
            and all(isinstance(w, str) for w in self.stopwords)
        ):
            raise ValueError(
                f"stopwords must be a frozenset of str or None, got {type(self.stopwords)}"
            )
        if self.stemmer is not None:
            languages = _import_stemmer().algorithms()
            if self.stemmer not in languages:
                raise ValueError(
                    f"unknown stemmer {self.stemmer!r}; expected None or one of {languages}"
                )
        if not isinstance(self.lowercase, bool):
            raise ValueError(f"lowercase must be a bool, got {self.lowercase!r}")

    def analyze(self, text: str) -> list[str]:
        """The terms of `text`, in order, repeats kept."""
        if self.lowercase:
            text = text.lower()
        words = _TOKEN_RE.findall(text)
        if self.stopwords:
            words = [w for w in words if w not in self.stopwords]
        if self.stemmer is not None and words:
            words = _stemmer(self.stemmer).stemWords(words)
        return words


@dataclass(frozen=True)
class BM25Params:
    """Scoring parameters; the formulas of each `method` are in the module docstring.
    `delta` is used only by bm25l and bm25+."""

    k1: float = 1.2
    b: float = 0.75
    delta: float = 0.5
    method: str = "lucene"

    def __post_init__(self) -> None:
        if not (isinstance(self.k1, int | float) and math.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"k1 must be a finite number >= 0, got {self.k1!r}")
        if not (isinstance(self.b, int | float) and 0 <= self.b <= 1):
            raise ValueError(f"b must be a number in [0, 1], got {self.b!r}")
        if not (isinstance(self.delta, int | float) and math.isfinite(self.delta)
                and self.delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0, got {self.delta!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")

    def idf(self, df: np.ndarray, n_docs: int) -> np.ndarray:
        """Inverse document frequency of terms found in `df` (> 0) of `n_docs` documents."""
        df = np.asarray(df, dtype=np.float64)
        if self.method == "lucene":
            return np.log1p((n_docs - df + 0.5) / (df + 0.5))
        if self.method == "robertson":
            return np.log(np.maximum((n_docs - df + 0.5) / (df + 0.5), 1.0))
        if self.method == "atire":
            return np.log(n_docs / df)
        if self.method == "bm25l":
            return np.log((n_docs + 1) / (df + 0.5))
        return np.log((n_docs + 1) / df)  # bm25+

    def tfc(self, tf: np.ndarray, dl: np.ndarray, avgdl: float) -> np.ndarray:
        """Term-frequency component for counts `tf` in documents of lengths `dl`."""
        tf = np.asarray(tf, dtype=np.float64)
        ratio = np.asarray(dl, dtype=np.float64) / avgdl if avgdl > 0 else 1.0
        norm = 1.0 - self.b + self.b * ratio
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 only where tf == 0
            present = self._tfc_present(tf, norm)
        return np.where(tf > 0, present, self.absent_term_share)

    def _tfc_present(self, tf: np.ndarray, norm: np.ndarray) -> np.ndarray:
        k1 = self.k1
        if self.method in ("lucene", "robertson"):
            return tf / (tf + k1 * norm)
        if self.method == "atire":
            return tf * (k1 + 1) / (tf + k1 * norm)
        if self.method == "bm25l":
            c = tf / norm
            return (k1 + 1) * (c + self.delta) / (k1 + c + self.delta)
        return tf * (k1 + 1) / (tf + k1 * norm) + self.delta  # bm25+

    @property
    def absent_term_share(self) -> float:
        """tfc(0): what a document lacking a query term still gets per unit of its idf
        (> 0 only for bm25l and bm25+, where it does not depend on the length)."""
        if self.method == "bm25l" and self.delta > 0:
            return (self.k1 + 1) * self.delta / (self.k1 + self.delta)
        if self.method == "bm25+":
            return float(self.delta)
        return 0.0


@dataclass(frozen=True)
class BM25Stats:
    """Collection statistics of an index: documents, total and mean length, distinct terms."""

    n_docs: int
    total_length: int
    avgdl: float
    n_terms: int


class BM25Index:
    """An inverted index of analysed documents, scored with BM25 at query time."""

    def __init__(self, params: BM25Params | None = None) -> None:
        self.params = params if params is not None else BM25Params()
        self._postings: dict[str, dict[str, int]] = {}  # term -> doc id -> tf
        self._doc_terms: dict[str, tuple[str, ...]] = {}  # doc id -> its distinct terms
        self._slot: dict[str, int] = {}  # doc id -> row in the length array
        self._slot_ids: list[str | None] = []
        self._free_slots: list[int] = []
        self._lengths = np.zeros(0, dtype=np.float64)
        self._total_length = 0
        # term -> (slots, tfc - absent share): each posting's share of the score per unit of
        # idf, cached until a document with the term changes or avgdl does
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._arrays_avgdl = 0.0

    # -- building -------------------------------------------------------------------------

    def add(self, doc_id: str, tokens: list[str]) -> None:
        """Index a document given its terms (e.g. from `Analyzer.analyze`); an empty list is
        a document of length 0. Raises ValueError if `doc_id` is already indexed."""
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"doc_id must be a non-empty str, got {doc_id!r}")
        if doc_id in self._slot:
            raise ValueError(f"document {doc_id!r} is already indexed; remove it first")
        counts = Counter(tokens)
        self._insert(doc_id, len(tokens), counts)

    def remove(self, doc_id: str) -> None:
        """Forget a document and its statistics. Raises KeyError if it is not indexed."""
        if doc_id not in self._slot:
            raise KeyError(f"document {doc_id!r} is not indexed")
        for term in self._doc_terms.pop(doc_id):
            posting = self._postings[term]
            del posting[doc_id]
            if not posting:
                del self._postings[term]
            self._arrays.pop(term, None)
        slot = self._slot.pop(doc_id)
        self._total_length -= int(self._lengths[slot])
        self._lengths[slot] = 0.0
        self._slot_ids[slot] = None
        self._free_slots.append(slot)

    def _insert(self, doc_id: str, length: int, counts: dict[str, int]) -> None:
        slot = self._take_slot(doc_id)
        self._lengths[slot] = length
        self._total_length += length
        postings, arrays = self._postings, self._arrays
        for term, tf in counts.items():
            posting = postings.get(term)
            if posting is None:
                postings[term] = {doc_id: tf}
            else:
                posting[doc_id] = tf
                if arrays:
                    arrays.pop(term, None)  # cached arrays of the term are stale now
        self._doc_terms[doc_id] = tuple(counts)

    def _take_slot(self, doc_id: str) -> int:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._slot_ids[slot] = doc_id
        else:
            slot = len(self._slot_ids)
            self._slot_ids.append(doc_id)
            if slot >= len(self._lengths):
                grown = np.zeros(max(16, 2 * len(self._lengths)), dtype=np.float64)
                grown[: len(self._lengths)] = self._lengths
                self._lengths = grown
        self._slot[doc_id] = slot
        return slot

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def from_postings(
        cls,
        doc_lengths: dict[str, int],
        postings: dict[str, dict[str, int]],
        params: BM25Params | None = None,
    ) -> BM25Index:
        """Rebuild an index from `doc_lengths()` and `postings()` (e.g. read back from a
        store). Each document's term counts must add up to its length."""
        per_doc: dict[str, dict[str, int]] = {doc_id: {} for doc_id in doc_lengths}
        for term, posting in postings.items():
            for doc_id, tf in posting.items():
                if doc_id not in per_doc:
                    raise ValueError(f"term {term!r} lists unknown document {doc_id!r}")
                if not isinstance(tf, int) or tf < 1:
                    raise ValueError(f"tf of {term!r} in {doc_id!r} must be an int >= 1, "
                                     f"got {tf!r}")
                per_doc[doc_id][term] = tf
        index = cls(params)
        for doc_id, counts in per_doc.items():
            length = doc_lengths[doc_id]
            if sum(counts.values()) != length:
                raise ValueError(f"document {doc_id!r} has length {length!r} but its term "
                                 f"counts add up to {sum(counts.values())}")
            index._insert(doc_id, length, counts)
        return index

    @classmethod
    def from_counts(cls, doc_counts: Iterable[tuple[str, dict[str, int]]],
                    params: BM25Params | None = None) -> BM25Index:
        """Build an index from (doc id, term -> tf) pairs, e.g. `term_counts` of each
        document read back from a store (the length of a document is the sum of its tfs)."""
        index = cls(params)
        frozen = gc.isenabled()
        gc.disable()  # millions of small dicts: collecting them mid-build only costs time
        try:
            for doc_id, counts in doc_counts:
                if doc_id in index._slot:
                    raise ValueError(f"document {doc_id!r} is given twice")
                tfs = counts.values()
                if tfs and (not set(map(type, tfs)) <= {int} or min(tfs) < 1):
                    bad = next(t for t, tf in counts.items()
                               if type(tf) is not int or tf < 1)
                    raise ValueError(f"tf of {bad!r} in {doc_id!r} must be an int >= 1, "
                                     f"got {counts[bad]!r}")
                index._insert(doc_id, sum(tfs), counts)
        finally:
            if frozen:
                gc.enable()
        return index

    def doc_lengths(self) -> dict[str, int]:
        """doc id -> length in tokens (a copy)."""
        return {doc_id: int(self._lengths[slot]) for doc_id, slot in self._slot.items()}

    def postings(self) -> dict[str, dict[str, int]]:
        """term -> doc id -> tf (a copy)."""
        return {term: dict(posting) for term, posting in self._postings.items()}

    # -- statistics -----------------------------------------------------------------------

    def stats(self) -> BM25Stats:
        n = len(self._slot)
        avgdl = self._total_length / n if n else 0.0
        return BM25Stats(n, self._total_length, avgdl, len(self._postings))

    def doc_freq(self, term: str) -> int:
        """Number of documents containing `term`."""
        return len(self._postings.get(term, ()))

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slot

    # -- scoring --------------------------------------------------------------------------

    def score(self, query_tokens: Iterable[str], doc_ids: Iterable[str]) -> np.ndarray:
        """BM25 scores (float64) of the given documents, in order, whether or not they
        contain a query term. Raises KeyError for a document that is not indexed."""
        slots = np.array([self._slot_of(d) for d in doc_ids], dtype=np.int64)
        scores = np.zeros(len(slots), dtype=np.float64)
        terms, weights, idf = self._query_terms(Counter(query_tokens))
        if not terms or not len(slots):
            return scores
        ids = [self._slot_ids[s] for s in slots]
        dl = self._lengths[slots]
        avgdl = self.stats().avgdl
        for term, w, term_idf in zip(terms, weights, idf, strict=True):
            posting = self._postings[term]
            tf = np.array([posting.get(d, 0) for d in ids], dtype=np.float64)
            scores += w * term_idf * self.params.tfc(tf, dl, avgdl)
        return scores

    def search(
        self, query_tokens: Iterable[str], k: int, allowed: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """The top `k` documents containing at least one query term, as (doc id, score) by
        score descending then doc id ascending; documents scoring <= 0 are left out.
        `allowed` restricts the candidates before the top k is taken; the statistics (N,
        df, avgdl) stay those of the whole index, so each score equals the unfiltered one."""
        return self.search_weighted(Counter(query_tokens), k, allowed)

    def search_weighted(
        self, query_weights: Mapping[str, float], k: int, allowed: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """`search` for a weighted query: term -> weight (> 0) multiplies that term's share
        of the score (`search(tokens)` is `search_weighted(Counter(tokens))`); used by
        query expansion, whose terms carry fractional weights."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        terms, weights, idf = self._query_terms(query_weights)
        if not terms:
            return []
        slots, scores = self._score_candidates(terms, weights, idf)
        if allowed is not None:
            keep = np.isin(slots, self._slots_of_allowed(allowed))
            slots, scores = slots[keep], scores[keep]
        positive = scores > 0
        return self._top_k(slots[positive], scores[positive], k)

    def term_counts(self, doc_id: str) -> dict[str, int]:
        """term -> tf of an indexed document (KeyError if it is not indexed)."""
        self._slot_of(doc_id)
        return {term: self._postings[term][doc_id] for term in self._doc_terms[doc_id]}

    def _slot_of(self, doc_id: str) -> int:
        try:
            return self._slot[doc_id]
        except KeyError:
            raise KeyError(f"document {doc_id!r} is not indexed") from None

    def _slots_of_allowed(self, allowed: set[str]) -> np.ndarray:
        slots = [self._slot[d] for d in allowed if d in self._slot]
        return np.array(slots, dtype=np.int64)

    def _query_terms(self, query_weights: Mapping[str, float]
                     ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Distinct known query terms, their weights and their idf."""
        for term, w in query_weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < math.inf:
                raise ValueError(f"query term weights must be finite numbers > 0, got "
                                 f"{term!r}: {w!r}")
        terms = [t for t in query_weights if t in self._postings]
        weights = np.array([query_weights[t] for t in terms], dtype=np.float64)
        df = np.array([len(self._postings[t]) for t in terms], dtype=np.float64)
        return terms, weights, self.params.idf(df, len(self._slot))

    def _term_arrays(self, term: str, avgdl: float) -> tuple[np.ndarray, np.ndarray]:
        """(slots, impacts) of a term's posting: impact = tfc(tf, dl, avgdl) minus the
        share every document gets, so a query only sums cached numbers (scores are linear
        in idf and the query weights)."""
        if avgdl != self._arrays_avgdl:
            self._arrays.clear()
            self._arrays_avgdl = avgdl
        arrays = self._arrays.get(term)
        if arrays is None:
            posting = self._postings[term]
            slots = np.fromiter((self._slot[d] for d in posting), np.int64, len(posting))
            tfs = np.fromiter(posting.values(), np.float64, len(posting))
            impacts = self.params.tfc(tfs, self._lengths[slots], avgdl)
            impacts -= self.params.absent_term_share
            arrays = self._arrays[term] = (slots, impacts)
        return arrays

    def _score_candidates(
        self, terms: list[str], weights: np.ndarray, idf: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots of the documents containing any of `terms` and their full scores."""
        avgdl = self.stats().avgdl
        arrays = [self._term_arrays(t, avgdl) for t in terms]
        slots = np.concatenate([a[0] for a in arrays])
        contrib = np.concatenate([w * a[1] for w, a in zip(weights * idf, arrays, strict=True)])
        baseline = float(np.sum(weights * idf)) * self.params.absent_term_share
        return _sum_by_slot(slots, contrib, len(self._slot_ids), baseline)

    def _top_k(self, slots: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        if len(scores) > k:  # keep everything tied with the k-th score, then sort exactly
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= kth
            slots, scores = slots[keep], scores[keep]
        ranked = sorted(zip(scores.tolist(), (self._slot_ids[s] for s in slots), strict=True),
                        key=lambda pair: (-pair[0], pair[1]))
        return [(doc_id, score) for score, doc_id in ranked[:k]]


def _sum_by_slot(
    slots: np.ndarray, values: np.ndarray, n_slots: int, baseline: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct `slots` (ascending) and the sum of `values` per slot, plus `baseline`. Dense
    accumulation over every slot when the postings are many, a sort when they are few."""
    if len(slots) * 16 >= n_slots:
        present = np.zeros(n_slots, dtype=bool)
        present[slots] = True
        unique = np.flatnonzero(present)
        return unique, np.bincount(slots, weights=values, minlength=n_slots)[unique] + baseline
    unique, inverse = np.unique(slots, return_inverse=True)
    return unique, np.bincount(inverse, weights=values) + baseline
