"""Retrieval metrics for a run against graded judgments, and TREC run / qrels files.

    from llmsys.rag.metrics import evaluate_run, evaluate_queries, read_trec_run

    run = {"q1": {"d3": 12.5, "d7": 11.0, "d9": 11.0}}   # query id -> doc id -> score
    qrels = {"q1": {"d7": 2, "d8": 1}}                   # query id -> doc id -> grade
    evaluate_run(run, qrels)        # {"recall@1": ..., "mrr@10": ..., "ndcg@10": ..., "map": ...}
    evaluate_queries(run, qrels)    # {"q1": {"recall@1": ..., ...}}: the per-query values
    ndcg_at_k(rank(run["q1"]), qrels["q1"], 10)

Ranking rule: documents by score, highest first; equal scores by doc id in *descending*
string order (code point order, which is byte order for UTF-8). This is trec_eval's rule,
and so pytrec_eval's (measured: with equal scores "c" ranks before "b" before "a", and "9"
before "10"); the values here match pytrec_eval to rounding, ties included. Like trec_eval,
evaluation ignores the rank column of a TREC run file and ranks by score.

A document is relevant when its grade is > 0; unjudged documents count as not relevant.
Per query, with R = the number of relevant documents (the same as trec_eval's measures):

- `precision_at_k`: relevant among the top k, divided by k (`P.k`).
- `recall_at_k`: relevant among the top k, divided by R (`recall.k`).
- `mrr_at_k`: 1 / rank of the first relevant document within the top k, else 0
  (trec_eval's `recip_rank` is not cut: it equals `mrr_at_k` of the run cut to k).
- `average_precision`: the sum of precision at the rank of each relevant document retrieved,
  divided by R, over the whole ranking (`map`).
- `ndcg_at_k`: DCG@k / ideal DCG@k with gain = the grade (linear; grades <= 0 give 0) and
  discount log2(rank + 1); the ideal ranking sorts all judged grades of the query
  (`ndcg_cut.k`).

`evaluate_run` averages over the queries of the qrels that have at least one relevant
document; such a query missing from the run scores 0 everywhere. Run queries without
judgments are ignored. Keys: `recall@k`, `precision@k`, `mrr@k`, `ndcg@k` for each k in
`ks`, and `map`.

TREC files: runs are lines `qid Q0 docid rank score tag` (`write_trec_run` numbers ranks
from 1 in the order above); qrels are lines `qid 0 docid grade`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["Qrels", "Run", "TrecFormatError", "average_precision", "evaluate_queries",
           "evaluate_run", "mrr_at_k", "ndcg_at_k", "precision_at_k", "rank",
           "read_trec_qrels", "read_trec_run", "recall_at_k", "write_trec_qrels",
           "write_trec_run"]

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]
PathOrFile = str | os.PathLike[str] | TextIO


class TrecFormatError(ValueError):
    """A TREC run or qrels file is malformed; the message names the file and line."""


# ---------------------------------------------------------------------------------------
# ranking and per-query metrics


def rank(scores: Mapping[str, float]) -> list[str]:
    """Doc ids best first: score descending, ties by doc id descending (as trec_eval)."""
    for doc_id, score in scores.items():
        if math.isnan(score):
            raise ValueError(f"score of document {doc_id!r} is NaN; scores must be numbers")
    return sorted(scores, key=lambda doc_id: (scores[doc_id], doc_id), reverse=True)


def precision_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Relevant documents among the top k, divided by k."""
    return _hits(ranking[:_check_k(k)], judgments) / k


def recall_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Relevant documents among the top k, divided by all relevant ones (0 if there are none)."""
    n_relevant = _num_relevant(judgments)
    return _hits(ranking[:_check_k(k)], judgments) / n_relevant if n_relevant else 0.0


def mrr_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document within the top k, 0 if none is there."""
    for position, doc_id in enumerate(ranking[:_check_k(k)], 1):
        if judgments.get(doc_id, 0) > 0:
            return 1.0 / position
    return 0.0


def average_precision(ranking: Sequence[str], judgments: Mapping[str, int]) -> float:
    """Mean of precision at each relevant document's rank, over all relevant documents."""
    n_relevant = _num_relevant(judgments)
    if not n_relevant:
        return 0.0
    hits, total = 0, 0.0
    for position, doc_id in enumerate(ranking, 1):
        if judgments.get(doc_id, 0) > 0:
            hits += 1
            total += hits / position
    return total / n_relevant


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """DCG of the top k over the ideal DCG of the top k (linear gains, log2 discount)."""
    gains = [max(judgments.get(doc_id, 0), 0) for doc_id in ranking[:_check_k(k)]]
    ideal = sorted((g for g in judgments.values() if g > 0), reverse=True)[:k]
    ideal_dcg = _dcg(ideal)
    return _dcg(gains) / ideal_dcg if ideal_dcg > 0 else 0.0


def _dcg(gains: Sequence[int]) -> float:
    return sum(gain / math.log2(position + 2) for position, gain in enumerate(gains) if gain)


def _hits(ranking: Sequence[str], judgments: Mapping[str, int]) -> int:
    return sum(1 for doc_id in ranking if judgments.get(doc_id, 0) > 0)


def _num_relevant(judgments: Mapping[str, int]) -> int:
    return sum(1 for grade in judgments.values() if grade > 0)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"cutoff k must be a positive integer, got {k!r}")
    return k


# ---------------------------------------------------------------------------------------
# whole runs


def evaluate_queries(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                     ks: Sequence[int] = (1, 5, 10, 100)) -> dict[str, dict[str, float]]:
    """Query id -> metric -> value, for each query of `qrels` with a relevant document."""
    if not ks:
        raise ValueError("ks must name at least one cutoff, got an empty sequence")
    for k in ks:
        _check_k(k)
    results = {}
    for query_id, judgments in qrels.items():
        if _num_relevant(judgments):
            results[query_id] = _query_metrics(rank(run.get(query_id, {})), judgments, ks)
    return results


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 ks: Sequence[int] = (1, 5, 10, 100)) -> dict[str, float]:
    """Metric -> mean over the queries of `qrels` that have a relevant document."""
    per_query = evaluate_queries(run, qrels, ks)
    if not per_query:
        raise ValueError(f"none of the {len(qrels)} queries in the qrels has a relevant "
                         f"judgment (grade > 0); there is nothing to average")
    names = next(iter(per_query.values()))
    return {name: sum(v[name] for v in per_query.values()) / len(per_query) for name in names}


def _query_metrics(ranking: list[str], judgments: Mapping[str, int],
                   ks: Sequence[int]) -> dict[str, float]:
    values = {f"recall@{k}": recall_at_k(ranking, judgments, k) for k in ks}
    values |= {f"precision@{k}": precision_at_k(ranking, judgments, k) for k in ks}
    values |= {f"mrr@{k}": mrr_at_k(ranking, judgments, k) for k in ks}
    values |= {f"ndcg@{k}": ndcg_at_k(ranking, judgments, k) for k in ks}
    values["map"] = average_precision(ranking, judgments)
    return values


# ---------------------------------------------------------------------------------------
# TREC files


def write_trec_run(run: Mapping[str, Mapping[str, float]], path_or_file: PathOrFile,
                   tag: str = "llmsys") -> None:
    """Write `qid Q0 docid rank score tag` lines, ranks from 1 in `rank` order."""
    _check_token(tag, "run tag")
    with _writer(path_or_file) as f:
        for query_id, scores in run.items():
            _check_token(query_id, "query id")
            for position, doc_id in enumerate(rank(scores), 1):
                _check_token(doc_id, "document id")
                f.write(f"{query_id} Q0 {doc_id} {position} {float(scores[doc_id])!r} {tag}\n")


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """Read a TREC run file into query id -> doc id -> score (the rank column is ignored)."""
    run: Run = {}
    for where, parts in _lines(path, 6, "'qid Q0 docid rank score tag'"):
        query_id, _, doc_id, position, score, _ = parts
        _number(int, position, "rank", where)
        scores = run.setdefault(query_id, {})
        if doc_id in scores:
            raise TrecFormatError(f"{where}: document {doc_id!r} appears twice for query "
                                  f"{query_id!r}; a run lists each document once per query")
        scores[doc_id] = _number(float, score, "score", where)
    return run


def write_trec_qrels(qrels: Mapping[str, Mapping[str, int]], path_or_file: PathOrFile) -> None:
    """Write `qid 0 docid grade` lines."""
    with _writer(path_or_file) as f:
        for query_id, judgments in qrels.items():
            _check_token(query_id, "query id")
            for doc_id, grade in judgments.items():
                _check_token(doc_id, "document id")
                f.write(f"{query_id} 0 {doc_id} {int(grade)}\n")


def read_trec_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Read a TREC qrels file into query id -> doc id -> grade."""
    qrels: Qrels = {}
    for where, (query_id, _, doc_id, grade) in _lines(path, 4, "'qid 0 docid grade'"):
        judgments = qrels.setdefault(query_id, {})
        value = _number(int, grade, "grade", where)
        if judgments.get(doc_id, value) != value:
            raise TrecFormatError(f"{where}: document {doc_id!r} is judged again for query "
                                  f"{query_id!r} with grade {value}, earlier "
                                  f"{judgments[doc_id]}")
        judgments[doc_id] = value
    return qrels


def utf8_lines(path: str | os.PathLike[str], error: type[ValueError] = ValueError
               ) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file; bytes that are not UTF-8 raise `error`
    naming the file, not a bare UnicodeDecodeError."""
    with Path(path).open(encoding="utf-8") as f:
        try:
            yield from enumerate(f, 1)
        except UnicodeDecodeError as e:
            raise error(f"{path}: not UTF-8 text ({e.reason}); save it as UTF-8") from None


def _lines(path: str | os.PathLike[str], n_fields: int,
           expected: str) -> Iterator[tuple[str, list[str]]]:
    for line_no, line in utf8_lines(path, TrecFormatError):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != n_fields:
            raise TrecFormatError(f"{path}:{line_no}: expected {expected} ({n_fields} "
                                  f"fields), got {len(parts)} fields: {line.strip()!r}")
        yield f"{path}:{line_no}", parts


def _number(kind: type[int] | type[float], text: str, what: str, where: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        article = "an integer" if kind is int else "a number"
        raise TrecFormatError(f"{where}: expected {article} {what}, got {text!r}") from None


def _check_token(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} cannot be written to a TREC file: it must be a "
                         f"non-empty string without whitespace")


@contextmanager
def _writer(path_or_file: PathOrFile) -> Iterator[TextIO]:
    if hasattr(path_or_file, "write"):
        yield path_or_file
    else:
        with Path(path_or_file).open("w", encoding="utf-8") as f:
            yield f
