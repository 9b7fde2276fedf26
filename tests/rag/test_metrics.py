"""Tests for llmsys.rag.metrics against pytrec_eval (trec_eval), and the TREC file helpers.

Run with `-s` to see bm25s's nDCG@10 on Cranfield.
"""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import pytest

from llmsys.rag.metrics import (
    TrecFormatError,
    average_precision,
    evaluate_queries,
    evaluate_run,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    rank,
    read_trec_qrels,
    read_trec_run,
    recall_at_k,
    write_trec_qrels,
    write_trec_run,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

CRANFIELD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cranfield"
KS = (1, 3, 5, 10, 100)
BM25_CRANFIELD_NDCG10 = 0.3597   # measured: bm25s k1=1.2 b=0.75, Snowball, English stop words


def reference(run: dict, qrels: dict, ks=KS) -> dict[str, dict[str, float]]:
    """Our metric names -> pytrec_eval's values, per query of `qrels` with a relevant doc."""
    cuts = ",".join(map(str, ks))
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {"map", f"ndcg_cut.{cuts}", f"P.{cuts}", f"recall.{cuts}"})
    full = evaluator.evaluate(run)
    cut = {k: pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: {d: s[d] for d in rank(s)[:k]} for q, s in run.items()}) for k in ks}
    out = {}
    for query_id, judgments in qrels.items():
        if not any(g > 0 for g in judgments.values()):
            continue
        values = full.get(query_id, {})                  # absent from the run: all zero
        out[query_id] = {"map": values.get("map", 0.0)}
        for k in ks:
            out[query_id] |= {f"recall@{k}": values.get(f"recall_{k}", 0.0),
                              f"precision@{k}": values.get(f"P_{k}", 0.0),
                              f"ndcg@{k}": values.get(f"ndcg_cut_{k}", 0.0),
                              f"mrr@{k}": cut[k].get(query_id, {}).get("recip_rank", 0.0)}
    return out


def assert_matches(run: dict, qrels: dict, ks=KS) -> None:
    ours, theirs = evaluate_queries(run, qrels, ks), reference(run, qrels, ks)
    assert ours.keys() == theirs.keys()
    for query_id, values in theirs.items():
        assert ours[query_id].keys() == values.keys()
        for name, value in values.items():
            assert ours[query_id][name] == pytest.approx(value, abs=1e-9), (query_id, name)
    means = evaluate_run(run, qrels, ks)
    for name in means:
        expected = sum(v[name] for v in theirs.values()) / len(theirs)
        assert means[name] == pytest.approx(expected, abs=1e-9), name


# ---------------------------------------------------------------------------------------
# ranking and hand-checked values


def test_rank_ties_by_doc_id_descending() -> None:
    assert rank({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}) == ["c", "b", "a", "d"]
    assert rank({"10": 1.0, "9": 1.0, "b": 1.0, "B": 1.0, "é": 1.0}) == ["é", "b", "B", "9", "10"]
    with pytest.raises(ValueError, match=r"score of document 'x' is NaN"):
        rank({"x": math.nan})


def test_rank_matches_pytrec_eval_tie_rule() -> None:
    docs = ["a", "b", "c", "10", "9", "é"]
    for relevant in docs:
        got = pytrec_eval.RelevanceEvaluator({"q": {relevant: 1}}, {"recip_rank"}).evaluate(
            {"q": dict.fromkeys(docs, 1.0)})
        assert got["q"]["recip_rank"] == 1 / (rank(dict.fromkeys(docs, 1.0)).index(relevant) + 1)


def test_hand_computed() -> None:
    ranking = ["d1", "d2", "d3", "d4"]
    judgments = {"d2": 2, "d4": 1, "d9": 3, "d1": 0}
    assert precision_at_k(ranking, judgments, 2) == 0.5
    assert precision_at_k(ranking, judgments, 10) == 0.2
    assert recall_at_k(ranking, judgments, 4) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, judgments, 1) == 0.0
    assert mrr_at_k(ranking, judgments, 2) == 0.5
    assert average_precision(ranking, judgments) == pytest.approx((1 / 2 + 2 / 4) / 3)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, judgments, 4) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([], judgments, 10) == 0.0
    assert recall_at_k(ranking, {"d1": 0}, 4) == 0.0 and average_precision(ranking, {}) == 0.0
    with pytest.raises(ValueError, match=r"cutoff k must be a positive integer, got 0"):
        ndcg_at_k(ranking, judgments, 0)


def test_evaluate_run_averaging() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}, "q3": {"c": 0}}  # q3: nothing relevant, skipped
    run = {"q1": {"a": 3.0, "x": 1.0}, "q4": {"a": 1.0}}     # q2 missing: scores 0; q4 ignored
    assert evaluate_run(run, qrels, ks=(1,)) == {
        "recall@1": 0.5, "precision@1": 0.5, "mrr@1": 0.5, "ndcg@1": 0.5, "map": 0.5}
    assert set(evaluate_queries(run, qrels)) == {"q1", "q2"}
    assert list(evaluate_run(run, qrels, ks=(1, 10))) == [
        "recall@1", "recall@10", "precision@1", "precision@10", "mrr@1", "mrr@10",
        "ndcg@1", "ndcg@10", "map"]
    with pytest.raises(ValueError, match=r"none of the 1 queries in the qrels has a relevant"):
        evaluate_run(run, {"q3": {"c": 0}})
    with pytest.raises(ValueError, match=r"cutoff k must be a positive integer, got -1"):
        evaluate_run(run, qrels, ks=(10, -1))
    with pytest.raises(ValueError, match=r"ks must name at least one cutoff"):
        evaluate_run(run, qrels, ks=())


# ---------------------------------------------------------------------------------------
# against pytrec_eval


def random_case(rng: random.Random) -> tuple[dict, dict]:
    pool = [f"d{i}" for i in range(rng.randint(1, 25))] + ["7", "10", "Z", "é"]
    scores = [rng.choice([0.0, 0.5, 1.0, 1.5, -2.0]) for _ in range(3)]  # few values: ties
    run, qrels = {}, {}
    for q in range(rng.randint(1, 6)):
        query_id = f"q{q}"
        if rng.random() < 0.85:
            judged = rng.sample(pool, rng.randint(1, len(pool)))
            qrels[query_id] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
        if rng.random() < 0.8:
            retrieved = rng.sample(pool, rng.randint(1, len(pool)))
            run[query_id] = {d: rng.choice(scores + [rng.uniform(-3, 3)]) for d in retrieved}
    qrels.setdefault("q0", {})["d0"] = 1          # at least one query to average over
    return run, qrels


def test_random_runs_match_pytrec_eval() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        run, qrels = random_case(rng)
        assert_matches(run, qrels)


@pytest.fixture(scope="module")
def cranfield_bm25():
    bm25s = pytest.importorskip("bm25s")
    stemmer = pytest.importorskip("Stemmer")
    if not (CRANFIELD / "cranqrel").is_file():
        pytest.skip(f"Cranfield data not found at {CRANFIELD}")
    from llmsys.rag.datasets import load_cranfield

    cran = load_cranfield(CRANFIELD)
    english = stemmer.Stemmer("english")
    index = bm25s.BM25(k1=1.2, b=0.75)
    index.index(bm25s.tokenize([d.text for d in cran.documents], stopwords="en",
                               stemmer=english, show_progress=False), show_progress=False)
    query_tokens = bm25s.tokenize([q.text for q in cran.queries], stopwords="en",
                                  stemmer=english, show_progress=False)
    docs, scores = index.retrieve(query_tokens, k=100, show_progress=False)
    run = {q.id: {cran.documents[int(d)].id: float(s) for d, s in zip(docs[i], scores[i])}
           for i, q in enumerate(cran.queries)}
    return run, cran.qrels


def test_cranfield_bm25_matches_pytrec_eval(cranfield_bm25) -> None:
    run, qrels = cranfield_bm25
    assert_matches(run, qrels, ks=(1, 5, 10, 100))


def test_cranfield_bm25_ndcg10(cranfield_bm25) -> None:
    run, qrels = cranfield_bm25
    metrics = evaluate_run(run, qrels, ks=(10,))
    print(f"\nbm25s on Cranfield (k1=1.2, b=0.75, Snowball, English stop words): "
          f"nDCG@10 = {metrics['ndcg@10']:.4f}, MAP = {metrics['map']:.4f}, "
          f"MRR@10 = {metrics['mrr@10']:.4f}, recall@10 = {metrics['recall@10']:.4f}")
    assert metrics["ndcg@10"] == pytest.approx(BM25_CRANFIELD_NDCG10, abs=0.01)


# ---------------------------------------------------------------------------------------
# TREC files


def test_trec_run_round_trip(tmp_path: Path) -> None:
    run = {"q1": {"d1": 1.0, "d2": 1.0, "d3": 0.1 + 0.2, "é": 0.25},
           "2": {"x": -1e-300, "y": 12345678.901234567}}
    write_trec_run(run, tmp_path / "run.txt", tag="bm25")
    lines = (tmp_path / "run.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["q1 Q0 d2 1 1.0 bm25", "q1 Q0 d1 2 1.0 bm25",
                         "q1 Q0 d3 3 0.30000000000000004 bm25"]
    assert read_trec_run(tmp_path / "run.txt") == run
    with (tmp_path / "run.txt").open(encoding="utf-8") as f:
        assert pytrec_eval.parse_run(f) == run
    buffer = io.StringIO()
    write_trec_run(run, buffer, tag="bm25")
    assert buffer.getvalue().splitlines() == lines


def test_trec_qrels_round_trip(tmp_path: Path) -> None:
    qrels = {"q1": {"d1": 2, "d2": 0, "d3": -1}, "q2": {"10": 1}}
    write_trec_qrels(qrels, tmp_path / "qrels.txt")
    assert (tmp_path / "qrels.txt").read_text().splitlines()[0] == "q1 0 d1 2"
    assert read_trec_qrels(tmp_path / "qrels.txt") == qrels
    with (tmp_path / "qrels.txt").open() as f:
        assert pytrec_eval.parse_qrel(f) == qrels


@pytest.mark.parametrize(("text", "message"), [
    ("q1 Q0 d1 1 0.5\n", r"run.txt:1: expected 'qid Q0 docid rank score tag' \(6 fields\), "
                         r"got 5 fields: 'q1 Q0 d1 1 0.5'"),
    ("\nq1 Q0 d1 1 high tag\n", r"run.txt:2: expected a number score, got 'high'"),
    ("q1 Q0 d1 first 0.5 tag\n", r"run.txt:1: expected an integer rank, got 'first'"),
    ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", r"run.txt:2: document 'd1' appears twice"),
])
def test_read_trec_run_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "run.txt").write_text(text)
    with pytest.raises(TrecFormatError, match=message):
        read_trec_run(tmp_path / "run.txt")


@pytest.mark.parametrize(("text", "message"), [
    ("q1 0 d1\n", r"qrels.txt:1: expected 'qid 0 docid grade' \(4 fields\), got 3 fields"),
    ("q1 0 d1 1.5\n", r"qrels.txt:1: expected an integer grade, got '1.5'"),
    ("q1 0 d1 1\nq1 0 d1 2\n", r"qrels.txt:2: document 'd1' is judged again for query 'q1'"),
])
def test_read_trec_qrels_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "qrels.txt").write_text(text)
    with pytest.raises(TrecFormatError, match=message):
        read_trec_qrels(tmp_path / "qrels.txt")


def test_write_rejects_whitespace_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"document id 'd 1' cannot be written to a TREC file"):
        write_trec_run({"q": {"d 1": 1.0}}, tmp_path / "run.txt")
    with pytest.raises(ValueError, match=r"run tag '' cannot be written"):
        write_trec_run({}, tmp_path / "run.txt", tag="")
    with pytest.raises(ValueError, match=r"query id 'q\\t1' cannot be written"):
        write_trec_qrels({"q\t1": {"d": 1}}, tmp_path / "qrels.txt")


def test_a_file_that_is_not_utf8_names_the_file(tmp_path) -> None:
    from llmsys.rag.metrics import TrecFormatError, read_trec_qrels
    path = tmp_path / "qrels.txt"
    path.write_bytes(b"q1 0 d1 1\nq1 0 caf\xe9 2\n")
    with pytest.raises(TrecFormatError, match=r"qrels.txt: not UTF-8 text"):
        read_trec_qrels(path)
