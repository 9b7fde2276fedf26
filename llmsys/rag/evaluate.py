"""Evaluate retrieval stages (BM25, dense, hybrid, hybrid + rerank) on an IR collection.

    from llmsys.rag.evaluate import HybridConfig, evaluate_stages
    metrics = evaluate_stages(collection, "build/rag-eval/cran.db", embedder,
                              stages=("bm25", "dense", "hybrid", "hybrid+rerank"), k=100)
    metrics["hybrid"]["ndcg@10"]

    python -m llmsys.rag.evaluate --cranfield DIR [--dev-fraction 0.5] [--json OUT]

Ingestion: each document becomes ONE chunk holding "title\\n\\ntext" (the whole document;
Cranfield abstracts are short, so no chunker is needed and a document's score is its chunk's
score). Documents with no text at all are stored without chunks. Re-running with the same
store file skips documents already there (the store's content hash).

Stages: "bm25", "dense", "hybrid", each optionally followed by "+rerank" (the top k of the
stage reordered by `MaxSimReranker`). Every query's top k chunks are turned into a document
run by `doc_ranking` (best chunk) and scored with `metrics.evaluate_run`; the reported
metrics are recall@10, recall@100, mrr@10, map and ndcg@10.

`main` splits the queries into dev and test (`Collection.split`), picks the hybrid settings
(fusion, RRF k, weights, candidate depth, reranker blend) that give the best dev nDCG@10 from
a small grid (`GRID_*`), then evaluates every stage with the defaults and with the tuned
settings on the test queries only. It prints a markdown table and writes the numbers and the
chosen settings as JSON. Embeddings go through a `CachedEmbedder` file, so re-runs are fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llmsys.rag.chunking import Chunk
from llmsys.rag.datasets import Collection, Document
from llmsys.rag.metrics import evaluate_run
from llmsys.rag.readers import SourceDocument
from llmsys.rag.retrieval import FUSIONS, MaxSimReranker, Retriever, doc_ranking
from llmsys.rag.store import Hit, Store

if TYPE_CHECKING:
    from llmsys.agent.memory import Embedder

__all__ = ["HybridConfig", "REPORTED", "evaluate_stages", "ingest", "main"]

BASE_STAGES = ("bm25", "dense", "hybrid")
DEFAULT_STAGES = ("bm25", "dense", "hybrid", "hybrid+rerank")
REPORTED = ("recall@10", "recall@100", "mrr@10", "map", "ndcg@10")
KS = (10, 100)
RERANK = "+rerank"
GRID_RRF_K = (5, 10, 20, 30, 60, 100, 200)
GRID_WEIGHTS = ((0.3, 0.7), (0.4, 0.6), (0.5, 0.5), (0.6, 0.4), (0.7, 0.3))
GRID_CANDIDATES = (20, 50, 100, 200)
GRID_RERANK_WEIGHT = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

Results = dict[str, dict[str, float]]
FirstStage = dict[str, tuple[list[Hit], list[Hit]]]   # query id -> (bm25 hits, dense hits)


@dataclass(frozen=True)
class HybridConfig:
    """Settings of the hybrid stage and of the reranker (see `Retriever`, `MaxSimReranker`)."""

    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = 60
    weights: tuple[float, float] = (0.5, 0.5)
    candidates: int = 100
    rerank_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {self.fusion!r}")
        if not 0.0 <= self.rerank_weight <= 1.0:
            raise ValueError(f"rerank_weight must be in [0, 1], got {self.rerank_weight!r}")

    def retriever(self, store: Store, mode: str) -> Retriever:
        return Retriever(store, mode, self.fusion, self.candidates,  # type: ignore[arg-type]
                         self.rrf_k, self.weights)


# ----------------------------------------------------------------------------- ingestion

def _source_document(document: Document, collection: str) -> SourceDocument:
    text = f"{document.title}\n\n{document.text}" if document.title else document.text
    return SourceDocument(document.id, text, document.title or None, collection, {})


def ingest(store: Store, collection: Collection, progress: bool = False) -> int:
    """Store every document of `collection` as one whole-document chunk; returns how many
    documents were (re)written. Embeds all texts in batches first (warming a cache)."""
    documents = [_source_document(d, collection.name) for d in collection.documents]
    texts = [d.text for d in documents if d.text.strip()]
    if texts:
        from llmsys.rag.embeddings import embed_in_batches
        embed_in_batches(store.embedder, texts, batch_size=128, progress=progress)
    written = 0
    for document in documents:
        chunks = [Chunk(document.text, 0, len(document.text))] if document.text.strip() else []
        written += not store.upsert(document, chunks).unchanged
    return written


# ----------------------------------------------------------------------------- stages

def _check_stages(stages: Sequence[str]) -> None:
    if not stages:
        raise ValueError("stages must name at least one stage, got an empty sequence")
    allowed = [*BASE_STAGES, *(s + RERANK for s in BASE_STAGES)]
    for stage in stages:
        if stage not in allowed:
            raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(allowed)}")


def first_stage(store: Store, collection: Collection, depth: int,
                progress: bool = False) -> FirstStage:
    """Each query's top `depth` BM25 and dense hits (computed once, fused many times)."""
    out: FirstStage = {}
    for query in _bar(collection.queries, progress, "first stage"):
        out[query.id] = (store.search_bm25(query.text, depth),
                         store.search_dense(query.text, depth))
    return out


def _stage_hits(stage: str, bm25: list[Hit], dense: list[Hit], k: int,
                retriever: Retriever) -> list[Hit]:
    base = stage.removesuffix(RERANK)
    if base == "bm25":
        return bm25[:k]
    if base == "dense":
        return dense[:k]
    return retriever.fuse(bm25, dense, k)


def run_stages(store: Store, collection: Collection, cached: FirstStage, stages: Sequence[str],
               k: int, config: HybridConfig, progress: bool = False) -> Results:
    """Stage -> metric -> value over `collection`'s queries, from cached first-stage hits."""
    _check_stages(stages)
    retriever = config.retriever(store, "hybrid")
    reranker = MaxSimReranker(store.embedder, config.rerank_weight)
    texts = {q.id: q.text for q in collection.queries}
    results: Results = {}
    for stage in stages:
        run: dict[str, dict[str, float]] = {}
        for qid in _bar(list(texts), progress, stage):
            hits = _stage_hits(stage, *cached[qid], k, retriever)
            if stage.endswith(RERANK):
                hits = reranker.rerank(texts[qid], hits, k)
            run[qid] = doc_ranking(hits)
        metrics = evaluate_run(run, collection.qrels, KS)
        results[stage] = {name: metrics[name] for name in REPORTED}
    return results


def evaluate_stages(collection: Collection, store_path: str | os.PathLike[str],
                    embedder: Embedder, stages: Sequence[str] = DEFAULT_STAGES, k: int = 100,
                    progress: bool = True, config: HybridConfig | None = None) -> Results:
    """Ingest `collection` into the store at `store_path`, run every query through each stage
    and return stage -> metric -> value (see the module docstring)."""
    _check_stages(stages)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    config = config if config is not None else HybridConfig()
    with Store(store_path, embedder) as store:
        ingest(store, collection, progress)
        cached = first_stage(store, collection, max(k, config.candidates), progress)
        return run_stages(store, collection, cached, stages, k, config, progress)


# ----------------------------------------------------------------------------- tuning

def _candidate_configs() -> Iterable[HybridConfig]:
    for candidates in GRID_CANDIDATES:
        for rrf_k in GRID_RRF_K:
            yield HybridConfig("rrf", rrf_k=rrf_k, candidates=candidates)
        for weights in GRID_WEIGHTS:
            yield HybridConfig("weighted", weights=weights, candidates=candidates)


def tune(store: Store, dev: Collection, cached: FirstStage, k: int) -> HybridConfig:
    """The hybrid settings, then the reranker blend, with the best nDCG@10 on `dev`."""
    def score(config: HybridConfig, stage: str) -> float:
        return run_stages(store, dev, cached, [stage], k, config)[stage]["ndcg@10"]

    best = max(_candidate_configs(), key=lambda c: score(c, "hybrid"))
    blends = [HybridConfig(best.fusion, best.rrf_k, best.weights, best.candidates, w)
              for w in GRID_RERANK_WEIGHT]
    return max(blends, key=lambda c: score(c, "hybrid+rerank"))


# ----------------------------------------------------------------------------- command line

def markdown_table(results: dict[str, Results]) -> str:
    """One row per (setting, stage), one column per reported metric."""
    lines = ["| setting | stage | " + " | ".join(REPORTED) + " |",
             "|---|---|" + "---|" * len(REPORTED)]
    for setting, stages in results.items():
        for stage, metrics in stages.items():
            values = " | ".join(f"{metrics[m]:.4f}" for m in REPORTED)
            lines.append(f"| {setting} | {stage} | {values} |")
    return "\n".join(lines)


def _bar(items: Sequence[str] | Sequence[object], enabled: bool, what: str) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=what, file=sys.stderr, leave=False)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llmsys.rag.evaluate",
                                     description="Evaluate BM25 / dense / hybrid / rerank.")
    parser.add_argument("--cranfield", required=True, help="directory with cran.all.1400 ...")
    parser.add_argument("--dev-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--workdir", default="build/rag-eval",
                        help="where the store, the embedding cache and the JSON go")
    parser.add_argument("--json", default=None, help="results file (default WORKDIR/...)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _minilm() -> Callable[[Path], Embedder]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmsys.agent.memory import MiniLMEmbedder
    from llmsys.rag.embeddings import CachedEmbedder
    return lambda path: CachedEmbedder(MiniLMEmbedder(), path)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from llmsys.rag.datasets import load_cranfield
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    collection = load_cranfield(args.cranfield)
    dev, test = collection.split(args.dev_fraction, seed=args.seed)
    embedder = _minilm()(workdir / "embeddings.db")
    progress = not args.no_progress
    with Store(workdir / f"{collection.name}.db", embedder) as store:
        ingest(store, collection, progress)
        depth = max(args.k, *GRID_CANDIDATES)
        cached = first_stage(store, collection, depth, progress)
        tuned = tune(store, dev, cached, args.k)
        results = {
            "default (test)": run_stages(store, test, cached, DEFAULT_STAGES, args.k,
                                         HybridConfig(), progress),
            "tuned on dev (test)": run_stages(store, test, cached, ("hybrid", "hybrid+rerank"),
                                              args.k, tuned, progress),
            "tuned (dev)": run_stages(store, dev, cached, ("hybrid", "hybrid+rerank"),
                                      args.k, tuned, progress),
        }
    print(f"{collection.name}: {len(dev.queries)} dev / {len(test.queries)} test queries, "
          f"k={args.k}; tuned: {asdict(tuned)}")
    print(markdown_table(results))
    out = Path(args.json) if args.json else workdir / f"{collection.name}-results.json"
    out.write_text(json.dumps({"tuned": asdict(tuned), "dev_fraction": args.dev_fraction,
                               "seed": args.seed, "k": args.k, "results": results}, indent=2))
    print(f"results written to {out}")
    return 0


def _cli() -> int:
    """`main` with bad input (a missing collection, a store made with another embedder)
    reported in one line and exit status 2 instead of a traceback."""
    from llmsys.rag.store import StoreError

    try:
        return main()
    except (OSError, ValueError, StoreError) as e:
        print(f"llmsys.rag.evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())

