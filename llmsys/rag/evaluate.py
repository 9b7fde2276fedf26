"""Evaluate retrieval stages (BM25, dense, hybrid; with feedback; with a reranker) on an IR
collection, tuning only on a dev split.

    from llmsys.rag.evaluate import HybridConfig, evaluate_stages
    metrics = evaluate_stages(collection, "build/rag-eval/cran.db", embedder,
                              stages=("bm25", "hybrid", "hybrid+prf"), k=100)
    metrics["hybrid+prf"]["ndcg@10"]

    python -m llmsys.rag.evaluate --cranfield DIR [--dev-fraction 0.5] [--json OUT]
    llmsys rag eval --dataset BEIR_DIR [--split test]          # the same, from the CLI

Ingestion: each document becomes ONE chunk holding "title\n\ntext" (the whole document;
Cranfield abstracts are short, so no chunker is needed and a document's score is its chunk's
score). Documents with no text at all are stored without chunks. Re-running with the same
store file skips documents already there (the store's content hash).

Stages: "bm25", "dense" or "hybrid", optionally followed by "+prf" (pseudo-relevance
feedback: RM3 for BM25, Rocchio for dense, `llmsys.rag.feedback`) and then by "+rerank" (the
top k reordered by `MaxSimReranker`, blended with the first stage by `rerank_weight`). Every
query's top k chunks become a document run by `doc_ranking` (best chunk), scored with
`metrics.evaluate_run`; reported: recall@10, recall@100, mrr@10, map and ndcg@10.

`evaluate_collection` (what `main` runs) splits the queries into dev and test
(`Collection.split`), measures every stage with default settings on the test queries, then
tunes on the dev queries only, each choice by dev nDCG@10: the RM3 and Rocchio settings
(`GRID_RM3`, `GRID_ROCCHIO`), the fusion settings of "hybrid" and of "hybrid+prf" (fusion,
RRF k, weights, candidate depth), the reranker blend (1.0 = no reranking), and finally the
best of the four hybrid stages. The tuned settings are then measured on the test queries. It
prints a markdown table and writes the numbers and the chosen settings as JSON. Embeddings go
through a `CachedEmbedder` file, so re-runs are fast.

Generation metrics: with `--generate-base-url URL --generate-model NAME` (and optionally a
separate `--judge-base-url`/`--judge-model`), the first `--generation-queries` test queries
are answered by `RAG` over hybrid + feedback retrieval and judged for faithfulness and answer
relevance (`generation_metrics.evaluate_generation`, MiniLM for the relevance cosines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llmsys.rag.chunking import Chunk
from llmsys.rag.datasets import Collection, Document, Query
from llmsys.rag.feedback import Feedback
from llmsys.rag.metrics import evaluate_run
from llmsys.rag.readers import SourceDocument
from llmsys.rag.retrieval import FUSIONS, MaxSimReranker, Retriever, doc_ranking
from llmsys.rag.store import Hit, Store

if TYPE_CHECKING:
    from llmsys.agent.chat_model import ChatModel
    from llmsys.agent.memory import Embedder

__all__ = ["HybridConfig", "REPORTED", "evaluate_stages", "ingest", "main"]

BASE_STAGES = ("bm25", "dense", "hybrid")
MODIFIERS = ("", "+prf", "+rerank", "+prf+rerank")
STAGES = tuple(base + mod for mod in MODIFIERS for base in BASE_STAGES)
DEFAULT_STAGES = ("bm25", "dense", "hybrid", "hybrid+rerank", "bm25+prf", "dense+prf",
                  "hybrid+prf", "hybrid+prf+rerank")
REPORTED = ("recall@10", "recall@100", "mrr@10", "map", "ndcg@10")
KS = (10, 100)
PRF, RERANK = "+prf", "+rerank"
GRID_RRF_K = (5, 10, 20, 30, 60, 100, 200)
GRID_WEIGHTS = ((0.3, 0.7), (0.4, 0.6), (0.5, 0.5), (0.6, 0.4), (0.7, 0.3))
GRID_CANDIDATES = (20, 50, 100, 200)
GRID_RERANK_WEIGHT = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
GRID_RM3 = tuple((docs, terms, weight) for docs in (5, 10, 20) for terms in (10, 20, 50)
                 for weight in (0.3, 0.5, 0.7))
GRID_ROCCHIO = tuple((docs, weight) for docs in (1, 3, 5, 10) for weight in (0.25, 0.5, 1.0))

Results = dict[str, dict[str, float]]
Lists = dict[str, dict[str, list[Hit]]]   # query id -> list name ("bm25", "dense+prf") -> hits


@dataclass(frozen=True)
class HybridConfig:
    """Settings of the hybrid stage, of feedback and of the reranker (see `Retriever`,
    `Feedback`, `MaxSimReranker`)."""

    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = 60
    weights: tuple[float, float] = (0.5, 0.5)
    candidates: int = 100
    rerank_weight: float = 0.5
    feedback: Feedback = Feedback()

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {self.fusion!r}")
        if not 0.0 <= self.rerank_weight <= 1.0:
            raise ValueError(f"rerank_weight must be in [0, 1], got {self.rerank_weight!r}")

    def retriever(self, store: Store, mode: str, feedback: bool = False) -> Retriever:
        return Retriever(store, mode, self.fusion, self.candidates,  # type: ignore[arg-type]
                         self.rrf_k, self.weights, self.feedback if feedback else None)


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
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(STAGES)}")


def first_stage(store: Store, collection: Collection, depth: int, config: HybridConfig,
                lists: Sequence[str] = ("bm25", "dense", "bm25+prf", "dense+prf"),
                progress: bool = False) -> Lists:
    """Each query's top `depth` hits of each named list (BM25 or dense, with or without
    feedback), computed once and fused many times."""
    plain, fed = config.retriever(store, "hybrid"), config.retriever(store, "hybrid", True)
    out: Lists = {}
    for query in _bar(collection.queries, progress, "first stage"):
        out[query.id] = {}
        for name in lists:
            retriever = fed if name.endswith(PRF) else plain
            search = retriever.search_bm25 if name.startswith("bm25") else retriever.search_dense
            out[query.id][name] = search(query.text, depth)
    return out


def _stage_hits(stage: str, lists: dict[str, list[Hit]], k: int, retriever: Retriever
                ) -> list[Hit]:
    base = stage.removesuffix(RERANK)
    suffix = PRF if base.endswith(PRF) else ""
    base = base.removesuffix(PRF)
    if base in ("bm25", "dense"):
        return lists[base + suffix][:k]
    return retriever.fuse(lists["bm25" + suffix], lists["dense" + suffix], k)


def run_stages(store: Store, collection: Collection, cached: Lists, stages: Sequence[str],
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
            hits = _stage_hits(stage, cached[qid], k, retriever)
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
        cached = first_stage(store, collection, max(k, config.candidates), config,
                             _lists_of(stages), progress)
        return run_stages(store, collection, cached, stages, k, config, progress)


def _lists_of(stages: Sequence[str]) -> tuple[str, ...]:
    suffixes = {PRF if PRF in stage else "" for stage in stages}
    return tuple(side + suffix for suffix in sorted(suffixes) for side in ("bm25", "dense"))


# ----------------------------------------------------------------------------- tuning

def _fusion_configs(base: HybridConfig) -> Iterable[HybridConfig]:
    for candidates in GRID_CANDIDATES:
        for rrf_k in GRID_RRF_K:
            yield replace(base, fusion="rrf", rrf_k=rrf_k, candidates=candidates)
        for weights in GRID_WEIGHTS:
            yield replace(base, fusion="weighted", weights=weights, candidates=candidates)


def _ndcg(store: Store, dev: Collection, cached: Lists, stage: str, k: int,
          config: HybridConfig) -> float:
    return run_stages(store, dev, cached, [stage], k, config)[stage]["ndcg@10"]


def tune_feedback(store: Store, dev: Collection, k: int, progress: bool = False) -> Feedback:
    """RM3 and Rocchio settings with the best dev nDCG@10 of BM25+prf and dense+prf."""
    def score(feedback: Feedback, name: str) -> float:
        config = HybridConfig(feedback=feedback)
        cached = first_stage(store, dev, k, config, (name,))
        return _ndcg(store, dev, cached, name, k, config)

    rm3 = [Feedback(docs, terms, weight, 0, 0.0) for docs, terms, weight in GRID_RM3]
    rocchio = [Feedback(0, 0, 1.0, docs, weight) for docs, weight in GRID_ROCCHIO]
    best_rm3 = max(_bar(rm3, progress, "tune RM3"), key=lambda f: score(f, "bm25+prf"))
    best_rocchio = max(_bar(rocchio, progress, "tune Rocchio"),
                       key=lambda f: score(f, "dense+prf"))
    return replace(best_rm3, dense_docs=best_rocchio.dense_docs,
                   dense_weight=best_rocchio.dense_weight)


def tune(store: Store, dev: Collection, cached: Lists, k: int, feedback: bool = False,
         base: HybridConfig | None = None) -> HybridConfig:
    """The hybrid fusion settings, then the reranker blend, with the best nDCG@10 on `dev`
    (for the "+prf" stages when `feedback`; `cached` must hold those lists)."""
    base = base if base is not None else HybridConfig()
    stage = "hybrid" + (PRF if feedback else "")
    best = max(_fusion_configs(base), key=lambda c: _ndcg(store, dev, cached, stage, k, c))
    blends = [replace(best, rerank_weight=w) for w in GRID_RERANK_WEIGHT]
    return max(blends, key=lambda c: _ndcg(store, dev, cached, stage + RERANK, k, c))


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m llmsys.rag.evaluate` and `llmsys rag eval`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cranfield", help="directory with cran.all.1400, cran.qry, cranqrel")
    source.add_argument("--dataset", help="a BEIR-format directory (corpus.jsonl, "
                                          "queries.jsonl, qrels/SPLIT.tsv)")
    parser.add_argument("--split", default="test", help="the BEIR qrels split")
    parser.add_argument("--dev-fraction", type=float, default=0.5,
                        help="share of the queries used for tuning (0 = no tuning)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--workdir", default="build/rag-eval",
                        help="where the store, the embedding cache and the JSON go")
    parser.add_argument("--json", default=None, help="results file (default WORKDIR/...)")
    parser.add_argument("--no-progress", action="store_true")
    gen = parser.add_argument_group("generation metrics (faithfulness, answer relevance)")
    gen.add_argument("--generate-base-url", default=None,
                     help="OpenAI-compatible endpoint that answers the test queries")
    gen.add_argument("--generate-model", default=None)
    gen.add_argument("--judge-base-url", default=None, help="judge endpoint (default: the "
                                                            "generating one)")
    gen.add_argument("--judge-model", default=None, help="judge model (default: the "
                                                         "generating one)")
    gen.add_argument("--api-key", default="none")
    gen.add_argument("--generation-queries", type=int, default=20,
                     help="how many test queries are answered and judged")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llmsys.rag.evaluate",
                                     description="Evaluate BM25 / dense / hybrid / feedback / "
                                                 "rerank stages on an IR collection.")
    add_arguments(parser)
    return parser.parse_args(argv)


def _minilm() -> Callable[[Path], Embedder]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmsys.agent.memory import MiniLMEmbedder
    from llmsys.rag.embeddings import CachedEmbedder
    return lambda path: CachedEmbedder(MiniLMEmbedder(), path)


def load_collection(args: argparse.Namespace) -> Collection:
    from llmsys.rag.datasets import load_beir, load_cranfield
    if args.cranfield:
        return load_cranfield(args.cranfield)
    return load_beir(args.dataset, split=args.split)


def _best_on_dev(store: Store, dev: Collection, cached: Lists, k: int,
                 choices: Sequence[tuple[str, HybridConfig]]) -> tuple[str, HybridConfig]:
    return max(choices, key=lambda c: _ndcg(store, dev, cached, c[0], k, c[1]))


def evaluate_collection(collection: Collection, workdir: Path, embedder: Embedder,
                        dev_fraction: float = 0.5, seed: int = 0, k: int = 100,
                        progress: bool = True) -> dict:
    """Every stage with default settings on the test queries, and (when `dev_fraction` > 0)
    feedback, fusion and reranking tuned on the dev queries, then measured on the test
    queries; the returned dict is what `main` writes as JSON."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction!r}")
    dev, test = collection.split(dev_fraction, seed=seed) if dev_fraction else (None, collection)
    depth = max(k, *GRID_CANDIDATES)
    default = HybridConfig()
    with Store(workdir / f"{collection.name}.db", embedder) as store:
        ingest(store, collection, progress)
        cached = first_stage(store, test, depth, default, progress=progress)
        results = {"default (test)": run_stages(store, test, cached, DEFAULT_STAGES, k,
                                                default, progress)}
        out = {"dev_queries": 0, "test_queries": len(test.queries), "k": k, "seed": seed,
               "dev_fraction": dev_fraction, "results": results}
        if dev is None:
            return out
        feedback = tune_feedback(store, dev, k, progress)
        tuned_base = HybridConfig(feedback=feedback)
        cached = first_stage(store, collection, depth, tuned_base, progress=progress)
        plain = tune(store, dev, cached, k, feedback=False)
        fed = tune(store, dev, cached, k, feedback=True, base=tuned_base)
        stages = ("hybrid", "hybrid+rerank", "hybrid+prf", "hybrid+prf+rerank")
        choices = [(stage, fed if PRF in stage else plain) for stage in stages]
        best_stage, best = _best_on_dev(store, dev, cached, k, choices)
        for part, queries in (("test", test), ("dev", dev)):
            rows = {**run_stages(store, queries, cached, ("bm25+prf", "dense+prf"), k, fed),
                    **{stage: run_stages(store, queries, cached, [stage], k, config)[stage]
                       for stage, config in choices}}
            results[f"tuned on dev ({part})"] = rows
        out.update(dev_queries=len(dev.queries), tuned_hybrid=asdict(plain),
                   tuned_feedback=asdict(fed), best={
                       "stage": best_stage, "settings": asdict(best),
                       "test": results["tuned on dev (test)"][best_stage]})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Evaluate the collection named by `args` (see `add_arguments`); print and write JSON."""
    collection = load_collection(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    embedder = _minilm()(workdir / "embeddings.db")
    out = evaluate_collection(collection, workdir, embedder, args.dev_fraction, args.seed,
                              args.k, not args.no_progress)
    if args.generate_base_url or args.generate_model:
        out["generation"] = _generation(args, collection, workdir, embedder)
    print(f"{collection.name}: {out['dev_queries']} dev / {out['test_queries']} test "
          f"queries, k={args.k}")
    print(markdown_table(out["results"]))
    if "best" in out:
        best = out["best"]
        print(f"best on dev: {best['stage']} {best['settings']} -> test nDCG@10 "
              f"{best['test']['ndcg@10']:.4f}")
    if "generation" in out:
        g = out["generation"]
        print(f"generation ({g['queries']} test queries, {g['stage']}): faithfulness "
              f"{_fmt(g['mean_faithfulness'])}, answer relevance "
              f"{_fmt(g['mean_answer_relevance'])}, refused {g['refused']}, judge failures "
              f"{g['judge_failures']}")
    path = Path(args.json) if args.json else workdir / f"{collection.name}-results.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"results written to {path}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_answers(store: Store, queries: Sequence[Query], generator: ChatModel,
                     judge: ChatModel, embedder: Embedder, config: HybridConfig,
                     k: int = 5) -> dict:
    """Answer each query with `RAG` over the hybrid + feedback retriever, then score the
    answers' faithfulness and relevance with `judge` (`generation_metrics`)."""
    from llmsys.rag.answer import RAG
    from llmsys.rag.generation_metrics import GenerationSample, evaluate_generation

    rag = RAG(config.retriever(store, "hybrid", feedback=True), generator, k=k)
    answers = [rag.answer(q.text) for q in queries]
    report = evaluate_generation([GenerationSample.from_answer(a) for a in answers], judge,
                                 embedder)
    return {"queries": len(answers), "stage": "hybrid+prf", "k": k,
            "refused": sum(a.refused for a in answers),
            "mean_faithfulness": report.mean_faithfulness,
            "mean_answer_relevance": report.mean_answer_relevance,
            "judge_failures": report.judge_failures, "report": report.to_dict()}


def _generation(args: argparse.Namespace, collection: Collection, workdir: Path,
                embedder: Embedder) -> dict:
    from llmsys.agent.chat_model import ChatModel

    if not args.generate_base_url or not args.generate_model:
        raise ValueError("generation metrics need --generate-base-url and --generate-model")
    if args.generation_queries < 1:
        raise ValueError(f"--generation-queries must be >= 1, got {args.generation_queries}")
    generator = ChatModel(args.generate_base_url, args.generate_model, args.api_key)
    judge = ChatModel(args.judge_base_url or args.generate_base_url,
                      args.judge_model or args.generate_model, args.api_key)
    _, test = (collection.split(args.dev_fraction, seed=args.seed) if args.dev_fraction
               else (None, collection))
    with Store(workdir / f"{collection.name}.db", embedder) as store:
        return evaluate_answers(store, test.queries[:args.generation_queries], generator,
                                judge, embedder, HybridConfig())


def _cli() -> int:
    """`main` with bad input (a missing collection, a store made with another embedder)
    reported in one line and exit status 2 instead of a traceback."""
    from llmsys.agent.chat_model import ModelError
    from llmsys.rag.store import StoreError

    try:
        return main()
    except (OSError, ValueError, StoreError, ModelError) as e:
        print(f"llmsys.rag.evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())

