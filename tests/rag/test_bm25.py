"""BM25 index and analyzer checked against bm25s (the reference) on the Cranfield collection.

Score tolerance: relative, |ours - bm25s| <= 1e-6 * |bm25s| (every compared score is > 0).
The reference is bm25s with float64 scores; its default float32 scores are checked too
(same top 10; they differ from ours by ~2e-7 relative, float32 rounding).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmsys.rag.bm25 import ENGLISH_STOPWORDS, Analyzer, BM25Index, BM25Params, BM25Stats

bm25s = pytest.importorskip("bm25s")
Stemmer = pytest.importorskip("Stemmer")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cranfield"
METHODS = ["lucene", "robertson", "atire", "bm25l", "bm25+"]
K = 10
RTOL = 1e-6


def _parse(path: Path) -> dict[str, str]:
    """id -> .W text of a Cranfield file (stray field-marker lines inside .W are dropped)."""
    records: dict[str, list[str]] = {}
    current, in_text = "", False
    for line in path.read_text().splitlines():
        if line.startswith(".I "):
            current, in_text = line.split()[1], False
            records[current] = []
        elif line.strip() in (".T", ".A", ".B", ".W"):
            in_text = in_text or line.strip() == ".W"
        elif in_text:
            records[current].append(line)
    return {key: "\n".join(lines) for key, lines in records.items()}


@pytest.fixture(scope="module")
def cran() -> dict:
    if not (DATA / "cran.all.1400").exists() or not (DATA / "cran.qry").exists():
        pytest.skip(f"Cranfield data not found in {DATA}")
    docs, queries = _parse(DATA / "cran.all.1400"), _parse(DATA / "cran.qry")
    analyzer = Analyzer()
    ids = list(docs)
    return {
        "ids": ids,
        "texts": [docs[i] for i in ids],
        "query_texts": list(queries.values()),
        "tokens": [analyzer.analyze(docs[i]) for i in ids],
        "queries": [analyzer.analyze(q) for q in queries.values()],
    }


class _Built:
    """Full-corpus indexes (ours and bm25s's), built once per module; tests must not
    change them."""

    def __init__(self, cran: dict) -> None:
        self.cran = cran
        self._ours: dict[str, BM25Index] = {}
        self._refs: dict[tuple[str, str], object] = {}

    def ours(self, method: str = "lucene") -> BM25Index:
        if method not in self._ours:
            self._ours[method] = _build(self.cran["ids"], self.cran["tokens"], method)
        return self._ours[method]

    def ref(self, method: str = "lucene", dtype: str = "float64"):
        if (method, dtype) not in self._refs:
            self._refs[method, dtype] = _reference(self.cran["tokens"], method, dtype)
        return self._refs[method, dtype]


@pytest.fixture(scope="module")
def built(cran) -> _Built:
    return _Built(cran)


def _bm25s_tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"),
                          return_ids=False, show_progress=False)


def _reference(tokens: list[list[str]], method: str, dtype: str = "float64"):
    retriever = bm25s.BM25(k1=1.2, b=0.75, method=method, dtype=dtype)
    retriever.index(tokens, show_progress=False)
    return retriever


def _build(ids: list[str], tokens: list[list[str]], method: str = "lucene") -> BM25Index:
    index = BM25Index(BM25Params(k1=1.2, b=0.75, method=method))
    for doc_id, doc_tokens in zip(ids, tokens, strict=True):
        index.add(doc_id, doc_tokens)
    return index


def _reference_top(retriever, ids: list[str], query: list[str]) -> list[tuple[str, float]]:
    """bm25s's top K as (doc id, score), zero-score padding dropped, ties by doc id."""
    docs, scores = retriever.retrieve([query], k=K, show_progress=False)
    pairs = [(ids[j], float(s)) for j, s in zip(docs[0], scores[0], strict=True) if s > 0]
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


def _assert_same_top(ours: list[tuple[str, float]], ref: list[tuple[str, float]]) -> None:
    assert [d for d, _ in ours] == [d for d, _ in ref]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in ref], rtol=RTOL, atol=0)


# -- analyzer ------------------------------------------------------------------------------


def test_stopwords_are_bm25s_english_list():
    from bm25s.stopwords import STOPWORDS_EN

    assert ENGLISH_STOPWORDS == frozenset(STOPWORDS_EN)


def test_analyzer_matches_bm25s_on_every_doc_and_query(cran):
    assert cran["tokens"] == _bm25s_tokens(cran["texts"])
    assert cran["queries"] == _bm25s_tokens(cran["query_texts"])


def test_analyzer_options():
    text = "The Flows, the flowing; x y"
    assert Analyzer().analyze(text) == ["flow", "flow"]
    assert Analyzer(stemmer=None).analyze(text) == ["flows", "flowing"]
    assert Analyzer(stopwords=None, stemmer=None).analyze(text) == ["the", "flows", "the",
                                                                   "flowing"]
    assert Analyzer(stemmer=None, lowercase=False).analyze(text) == ["The", "Flows", "flowing"]
    assert Analyzer().analyze("") == []
    with pytest.raises(ValueError, match="unknown stemmer 'klingon'"):
        Analyzer(stemmer="klingon")
    with pytest.raises(ValueError, match="frozenset"):
        Analyzer(stopwords={"a"})  # type: ignore[arg-type]


# -- scores against bm25s --------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_top10_and_scores_match_bm25s(cran, built, method):
    index, ref = built.ours(method), built.ref(method)
    for query in cran["queries"]:
        ours = index.search(query, K)
        _assert_same_top(ours, _reference_top(ref, cran["ids"], query))
        assert len(ours) == K


@pytest.mark.parametrize("method", METHODS)
def test_score_of_every_doc_matches_bm25s(cran, built, method):
    """`score` includes the absent-term share of bm25l / bm25+ for every document."""
    index, ref = built.ours(method), built.ref(method)
    for query in cran["queries"][::5]:
        np.testing.assert_allclose(index.score(query, cran["ids"]), ref.get_scores(query),
                                   rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
def test_top10_matches_bm25s_default_float32(cran, built, method):
    index, ref = built.ours(method), built.ref(method, dtype="float32")
    for query in cran["queries"]:
        _assert_same_top(index.search(query, K), _reference_top(ref, cran["ids"], query))


def test_repeated_query_terms_count_per_occurrence(cran, built):
    ids, index, ref = cran["ids"], built.ours(), built.ref()
    once, twice = ["flow", "heat"], ["flow", "heat", "flow"]
    np.testing.assert_allclose(index.score(twice, ids), ref.get_scores(twice), rtol=RTOL)
    flow_only = index.score(["flow"], ids)
    np.testing.assert_allclose(index.score(twice, ids), index.score(once, ids) + flow_only)


def test_search_equals_score_and_drops_unknown_terms(cran, built):
    index = built.ours()
    for query in cran["queries"][:20]:
        hits = index.search(query + ["zzz-not-a-term"], K)
        scores = index.score(query, [d for d, _ in hits])
        np.testing.assert_allclose([s for _, s in hits], scores, rtol=1e-12)
    assert index.search(["zzz-not-a-term"], K) == []
    assert index.search([], K) == []


# -- building, removing, persisting ----------------------------------------------------------


def test_incremental_add_equals_bulk_build(cran, built):
    ids, tokens = cran["ids"], cran["tokens"]
    in_order = built.ours()
    shuffled = list(zip(ids, tokens, strict=True))
    random.Random(0).shuffle(shuffled)
    out_of_order = _build([d for d, _ in shuffled], [t for _, t in shuffled])
    postings: dict[str, dict[str, int]] = {}
    for doc_id, doc_tokens in zip(ids, tokens, strict=True):
        for term, tf in Counter(doc_tokens).items():
            postings.setdefault(term, {})[doc_id] = tf
    lengths = {doc_id: len(t) for doc_id, t in zip(ids, tokens, strict=True)}
    bulk = BM25Index.from_postings(lengths, postings)
    total = sum(lengths.values())
    expected = BM25Stats(len(ids), total, total / len(ids), len(postings))
    for index in (in_order, out_of_order, bulk):
        assert index.stats() == expected
        assert index.doc_lengths() == lengths and index.postings() == postings
    for query in cran["queries"]:
        assert out_of_order.search(query, K) == in_order.search(query, K)
        assert bulk.search(query, K) == in_order.search(query, K)


def test_remove_updates_statistics_exactly_and_matches_bm25s(cran):
    ids, tokens = cran["ids"], cran["tokens"]
    index = _build(ids, tokens)
    gone = set(random.Random(1).sample(ids, 100))
    for doc_id in gone:
        index.remove(doc_id)
    kept = [(d, t) for d, t in zip(ids, tokens, strict=True) if d not in gone]
    fresh = _build([d for d, _ in kept], [t for _, t in kept])
    assert index.stats() == fresh.stats()
    assert index.postings() == fresh.postings()
    assert index.doc_lengths() == fresh.doc_lengths()
    ref = _reference([t for _, t in kept], "lucene")
    for query in cran["queries"]:
        _assert_same_top(index.search(query, K), _reference_top(ref, [d for d, _ in kept], query))


def test_remove_then_readd_gives_identical_scores(cran):
    ids, tokens = cran["ids"], cran["tokens"]
    index = _build(ids, tokens)
    before = [index.search(q, K) for q in cran["queries"]]
    stats = index.stats()
    doc_id, doc_tokens = ids[12], tokens[12]
    index.remove(doc_id)
    assert doc_id not in index and len(index) == len(ids) - 1
    assert index.stats().total_length == stats.total_length - len(doc_tokens)
    for term in set(doc_tokens):
        assert index.doc_freq(term) == sum(term in t for t in tokens) - 1
    index.add(doc_id, doc_tokens)
    assert index.stats() == stats
    assert [index.search(q, K) for q in cran["queries"]] == before


def test_add_and_remove_errors():
    index = BM25Index()
    index.add("a", ["x"])
    with pytest.raises(ValueError, match="already indexed"):
        index.add("a", ["y"])
    with pytest.raises(ValueError, match="non-empty str"):
        index.add("", ["y"])
    with pytest.raises(KeyError, match="'b' is not indexed"):
        index.remove("b")
    with pytest.raises(KeyError, match="'b' is not indexed"):
        index.score(["x"], ["b"])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        index.search(["x"], 0)
    index.remove("a")
    assert index.stats() == BM25Stats(0, 0, 0.0, 0) and index.search(["x"], 3) == []


def test_empty_documents_count_in_statistics():
    index = BM25Index()
    index.add("empty", [])
    index.add("full", ["x", "x", "y"])
    assert index.stats() == BM25Stats(2, 3, 1.5, 2)
    assert [d for d, _ in index.search(["x"], 5)] == ["full"]
    assert index.score(["x"], ["empty"])[0] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_extreme_params_give_finite_scores(method):
    """k1 = 0 and b = 1 make tf / (tf + k1 * norm) 0/0 for absent terms and empty docs."""
    for params in (BM25Params(k1=0.0, b=1.0, method=method),
                   BM25Params(k1=0.0, b=1.0, delta=0.0, method=method)):
        index = BM25Index(params)
        index.add("empty", [])
        index.add("a", ["x", "y"])
        index.add("b", ["y"])
        scores = index.score(["x", "y"], ["empty", "a", "b"])
        assert np.isfinite(scores).all() and scores[1] >= scores[2] >= scores[0] >= 0


def test_from_postings_round_trip_and_validation(cran, built):
    index = built.ours()
    again = BM25Index.from_postings(index.doc_lengths(), index.postings(), index.params)
    for query in cran["queries"][:30]:
        assert again.search(query, K) == index.search(query, K)
    with pytest.raises(ValueError, match="unknown document 'b'"):
        BM25Index.from_postings({"a": 1}, {"x": {"a": 1, "b": 1}})
    with pytest.raises(ValueError, match="length 2 but its term counts add up to 1"):
        BM25Index.from_postings({"a": 2}, {"x": {"a": 1}})
    with pytest.raises(ValueError, match="int >= 1"):
        BM25Index.from_postings({"a": 0}, {"x": {"a": 0}})


# -- filtering -------------------------------------------------------------------------------


def test_allowed_restricts_candidates_with_full_index_statistics(cran, built):
    """Filtering keeps the statistics (N, df, avgdl) of the whole index: the result is the
    full-index ranking restricted to `allowed`, not a search of an index of those docs."""
    ids, tokens = cran["ids"], cran["tokens"]
    index, ref = built.ours(), built.ref()
    allowed = set(random.Random(2).sample(ids, 300))
    mask = np.array([d in allowed for d in ids])
    sub_index = _build([d for d in ids if d in allowed],
                       [t for d, t in zip(ids, tokens, strict=True) if d in allowed])
    differs_from_sub_index = 0
    for query in cran["queries"]:
        hits = index.search(query, K, allowed=allowed)
        assert hits and {d for d, _ in hits} <= allowed
        full = ref.get_scores(query)
        order = sorted((-s, d) for d, s, ok in zip(ids, full, mask, strict=True) if ok and s > 0)
        _assert_same_top(hits, [(d, -s) for s, d in order[:K]])
        differs_from_sub_index += hits != sub_index.search(query, K)
    assert differs_from_sub_index > 0
    assert index.search(cran["queries"][0], K, allowed=set()) == []
    assert index.search(cran["queries"][0], K, allowed={"no-such-doc"}) == []


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"k1": -1.0}, "k1 must be"), ({"k1": float("inf")}, "k1 must be"),
     ({"b": 1.5}, r"b must be a number in \[0, 1\]"), ({"delta": -0.1}, "delta must be"),
     ({"method": "bm11"}, "unknown method 'bm11'")],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BM25Params(**kwargs)


def test_lucene_formula_by_hand():
    index = BM25Index(BM25Params(k1=1.2, b=0.75))
    index.add("a", ["x", "x", "y"])
    index.add("b", ["y"])
    n, df, tf, dl, avgdl = 2, 1, 2, 3, 2.0
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    expected = idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * dl / avgdl))
    assert index.search(["x"], 1) == [("a", pytest.approx(expected, rel=1e-12))]


# -- latency (recorded, not asserted) --------------------------------------------------------


def test_query_latency_for_the_record(cran, built, capsys):
    """Both warmed up first; bm25s with its defaults (float32, numpy backend)."""
    index, ref = built.ours(), built.ref(dtype="float32")
    for query in cran["queries"]:
        index.search(query, K)
        ref.retrieve([query], k=K, show_progress=False)
    ours, theirs = [], []
    for query in cran["queries"]:
        start = time.perf_counter()
        index.search(query, K)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref.retrieve([query], k=K, show_progress=False)
        theirs.append(time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nBM25 median query latency over {len(ours)} Cranfield queries, top {K}: "
              f"llmsys {statistics.median(ours) * 1e6:.0f} us, "
              f"bm25s {statistics.median(theirs) * 1e6:.0f} us")
