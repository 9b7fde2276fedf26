"""`llmsys rag …`: ingest documents into a store file, search it, answer from it, evaluate.

    llmsys rag ingest docs/ paper.pdf https://example.com/post --db rag.db [--prune]
    llmsys rag query "how do I install it?" --db rag.db [--mode bm25|dense|hybrid]
        [--feedback] [--rerank maxsim|llm|cross-encoder] [--top-k 5] [--filter source=a.md]
    llmsys rag query --db rag.db --queries queries.jsonl --run run.trec [--top-k 100]
    llmsys rag answer "how do I install it?" --db rag.db --base-url URL --model NAME
    llmsys rag eval --cranfield DIR | --dataset BEIR_DIR [--dev-fraction 0.5]
    llmsys rag info --db rag.db          # counts, file size, open time, consistency check
    llmsys rag delete DOC_ID … --db rag.db

The store remembers the embedder it was made with; open it with the same one (MiniLM by
default, or `--embed-base-url URL --embed-model NAME` for an OpenAI-compatible
`/v1/embeddings` endpoint). Embeddings are cached by content hash next to the store
(`<db>.embeddings`), so re-ingesting edited files only embeds new chunks.

`query --queries FILE --run FILE` reads BEIR-style JSONL queries (`_id`, `text`) and writes a
TREC run (`qid Q0 docid rank score tag`): each query's documents ranked by their best chunk
among the top `--depth` chunks, cut to `--top-k` documents.

Chat-model steps (`--rerank llm`, `--transform multi-query|hyde`, `answer`) use `--base-url`
and `--model` (any OpenAI-compatible endpoint). `--rerank cross-encoder` needs
`--cross-encoder DIR`, a local sequence-classification model directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmsys.rag.store import Hit, Store

CHUNKERS = ("recursive", "fixed", "sentence-window", "semantic")
RERANKERS = ("none", "maxsim", "llm", "cross-encoder")
TRANSFORMS = ("none", "multi-query", "hyde")


# ----------------------------------------------------------------------------- parsers

def add_rag_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rag", help="ingest, search, answer from and evaluate a document store")
    rag = p.add_subparsers(dest="rag_command", required=True)

    i = rag.add_parser("ingest", help="read, chunk, embed and store files, folders and URLs")
    i.add_argument("paths", nargs="+", help="files, folders and http(s) URLs")
    _add_store_args(i)
    i.add_argument("--chunker", default="recursive", choices=CHUNKERS)
    i.add_argument("--max-tokens", type=int, default=256, help="chunk size in tokens")
    i.add_argument("--overlap", type=int, default=32, help="overlap of the fixed chunker")
    i.add_argument("--window", type=int, default=2, help="sentences each side (sentence-window)")
    i.add_argument("--prune", action="store_true",
                   help="remove stored documents from these paths whose files are gone")
    i.add_argument("--batch-chunks", type=int, default=256, help="chunks per embedding batch")
    i.add_argument("--no-progress", action="store_true")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=user_errors(cmd_ingest))

    q = rag.add_parser("query", help="search the store (one query, or a batch into a TREC run)")
    q.add_argument("query", nargs="?", help="the query (or use --queries)")
    _add_store_args(q)
    _add_search_args(q)
    q.add_argument("--queries", default=None, help="JSONL queries (_id, text) for a batch")
    q.add_argument("--run", default=None, help="write a TREC run file (with --queries)")
    q.add_argument("--tag", default="llmsys", help="the run tag of the TREC file")
    q.add_argument("--depth", type=int, default=None,
                   help="chunks retrieved per query before ranking documents "
                        "(default: max(100, 3 * top-k) for runs)")
    q.add_argument("--json", action="store_true", help="print hits as JSON lines")
    q.set_defaults(func=user_errors(cmd_query))

    a = rag.add_parser("answer", help="answer a question from the store, with citations")
    a.add_argument("question")
    _add_store_args(a)
    _add_search_args(a)
    a.add_argument("--min-score", type=float, default=None,
                   help="refuse when no retrieved chunk scores at least this")
    a.add_argument("--min-similarity", type=float, default=0.3,
                   help="refuse when no retrieved chunk's embedding has at least this cosine "
                        "with the question's (0.3 suits MiniLM; a negative value disables)")
    a.add_argument("--max-context-chars", type=int, default=12_000)
    a.add_argument("--json", action="store_true", help="print the Answer as JSON")
    a.set_defaults(func=user_errors(cmd_answer))

    e = rag.add_parser("eval", help="retrieval metrics per stage on Cranfield or BEIR data")
    from llmsys.rag.evaluate import add_arguments
    add_arguments(e)
    e.set_defaults(func=user_errors(cmd_eval))

    n = rag.add_parser("info", help="counts, file size, open time and a consistency check")
    _add_store_args(n)
    n.set_defaults(func=user_errors(cmd_info))

    d = rag.add_parser("delete", help="remove documents (and their chunks) by id")
    d.add_argument("doc_ids", nargs="+")
    _add_store_args(d)
    d.set_defaults(func=user_errors(cmd_delete))


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="the store's SQLite file")
    p.add_argument("--embed-base-url", default=None,
                   help="OpenAI-compatible embeddings endpoint (…/v1); default: MiniLM")
    p.add_argument("--embed-model", default=None, help="model id at --embed-base-url")
    p.add_argument("--embed-api-key", default="none")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="hybrid", choices=("bm25", "dense", "hybrid"))
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--feedback", action="store_true",
                   help="pseudo-relevance feedback (RM3 and Rocchio) before the final search")
    p.add_argument("--mmr", type=float, default=None, metavar="LAMBDA",
                   help="pick diverse results by MMR (1 = relevance only, 0 = diversity only)")
    p.add_argument("--rerank", default="none", choices=RERANKERS)
    p.add_argument("--cross-encoder", default=None, help="model directory (--rerank "
                                                         "cross-encoder)")
    p.add_argument("--transform", default="none", choices=TRANSFORMS,
                   help="rewrite the query with the chat model first")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="only chunks whose KEY is VALUE (repeat a key to allow several)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible chat endpoint (…/v1)")
    p.add_argument("--model", default=None, help="chat model id at --base-url")
    p.add_argument("--api-key", default="none")


# ----------------------------------------------------------------------------- building

def open_store(args: argparse.Namespace, create: bool = False) -> Store:
    """The store at `--db` with the embedder the flags name, cached beside the file; only
    `ingest` (`create`) may start a new file."""
    if not create and not Path(args.db).is_file():
        raise ValueError(f"--db {args.db}: no such store file (make one with `llmsys rag "
                         "ingest PATH... --db FILE`)")
    return store_at(args.db, args.embed_base_url, args.embed_model, args.embed_api_key)


def store_at(db: str | os.PathLike[str], embed_base_url: str | None = None,
             embed_model: str | None = None, embed_api_key: str = "none") -> Store:
    """A store file opened with MiniLM, or with an OpenAI-compatible embeddings endpoint
    when both `embed_base_url` and `embed_model` are given; embeddings are cached in
    `<db>.embeddings`."""
    from llmsys.rag.store import Store

    path = Path(db)
    if path.is_dir():
        raise ValueError(f"--db must be a file, got the folder {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Store(path, _cached(embed_base_url, embed_model, embed_api_key, path))


def _cached(embed_base_url: str | None, embed_model: str | None, embed_api_key: str,
            path: Path) -> Any:
    from llmsys.rag.embeddings import CachedEmbedder
    embedder = _embedder(embed_base_url, embed_model, embed_api_key)
    return CachedEmbedder(embedder, path.with_name(path.name + ".embeddings"))


def _embedder(embed_base_url: str | None, embed_model: str | None, embed_api_key: str) -> Any:
    if (embed_base_url is None) != (embed_model is None):
        raise ValueError("--embed-base-url and --embed-model go together")
    if embed_base_url is not None:
        from llmsys.rag.embeddings import OpenAIEmbedder
        return OpenAIEmbedder(embed_base_url, embed_model, embed_api_key)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmsys.agent.memory import MiniLMEmbedder
    return MiniLMEmbedder()


def _chunker(args: argparse.Namespace, store: Store) -> Any:
    from llmsys.rag import chunking

    if args.chunker == "recursive":
        return chunking.RecursiveChunker(max_tokens=args.max_tokens)
    if args.chunker == "fixed":
        return chunking.FixedTokenChunker(size=args.max_tokens, overlap=args.overlap)
    if args.chunker == "sentence-window":
        return chunking.SentenceWindowChunker(window=args.window)
    return chunking.SemanticChunker(embedder=store.embedder, max_tokens=args.max_tokens)


def _chat_model(args: argparse.Namespace, what: str) -> Any:
    if not args.base_url or not args.model:
        raise ValueError(f"{what} needs a chat model: give --base-url and --model")
    from llmsys.agent.chat_model import ChatModel
    return ChatModel(args.base_url, args.model, args.api_key)


def parse_filter(items: list[str]) -> dict[str, Any] | None:
    """KEY=VALUE items -> a store filter; a repeated key allows each of its values. VALUE is
    read as JSON when it parses (3, true, null), else as a string."""
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list | dict):
            value = raw
        if key in out:
            previous = out[key] if isinstance(out[key], list) else [out[key]]
            out[key] = [*previous, value]
        else:
            out[key] = value
    return out


def build_search(args: argparse.Namespace, store: Store
                 ) -> Callable[[str, int, dict[str, Any] | None], list[Hit]]:
    """search(query, k, filter) for the flags: retriever (+ feedback), transform, reranker."""
    from llmsys.rag.feedback import Feedback
    from llmsys.rag.retrieval import Retriever

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    retriever: Any = Retriever(store, args.mode, feedback=Feedback() if args.feedback else None,
                               mmr_lambda=args.mmr)
    if args.transform != "none":
        from llmsys.rag.query_transforms import TransformingRetriever
        retriever = TransformingRetriever(retriever, _chat_model(args, f"--transform "
                                                                       f"{args.transform}"),
                                          mode=args.transform)
    reranker = _reranker(args, store)
    if reranker is None:
        return retriever.search

    def search(query: str, k: int, filter: dict[str, Any] | None) -> list[Hit]:
        return reranker.rerank(query, retriever.search(query, max(4 * k, 20), filter), k)
    return search


def _reranker(args: argparse.Namespace, store: Store) -> Any:
    if args.rerank == "none":
        if args.cross_encoder:
            raise ValueError("--cross-encoder is used with --rerank cross-encoder")
        return None
    if args.rerank == "maxsim":
        from llmsys.rag.retrieval import MaxSimReranker
        return MaxSimReranker(store.embedder, first_stage_weight=0.5)
    if args.rerank == "llm":
        from llmsys.rag.rerankers import LLMJudgeReranker
        return LLMJudgeReranker(_chat_model(args, "--rerank llm"))
    if not args.cross_encoder:
        raise ValueError("--rerank cross-encoder needs --cross-encoder DIR (a local model)")
    from llmsys.rag.rerankers import CrossEncoderReranker
    return CrossEncoderReranker(args.cross_encoder)


# ----------------------------------------------------------------------------- commands

def cmd_ingest(args: argparse.Namespace) -> None:
    from llmsys.rag.ingest import ingest

    with open_store(args, create=True) as store:
        report = ingest(store, args.paths, _chunker(args, store), prune=args.prune,
                        progress=not args.no_progress, batch_chunks=args.batch_chunks)
        total = store.count()
    if args.json:
        print(json.dumps({**report.to_dict(), "chunks_in_store": total}))
        return
    for skipped in report.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    print(f"{report.summary()}; {total} chunks in {args.db}")


def cmd_query(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.queries is None):
        raise ValueError("give either a query or --queries FILE")
    if args.run and not args.queries:
        raise ValueError("--run needs --queries FILE")
    filter = parse_filter(args.filter)
    with open_store(args) as store:
        search = build_search(args, store)
        if args.queries:
            _run_queries(args, search, filter)
            return
        hits = search(args.query, args.top_k, filter)
        for rank, hit in enumerate(hits, 1):
            if args.json:
                print(json.dumps(_hit_dict(hit, rank), ensure_ascii=False))
            else:
                print(_hit_line(hit, rank))
        if not hits and not args.json:
            print("no results")


def _hit_dict(hit: Hit, rank: int) -> dict[str, Any]:
    return {"rank": rank, "chunk_id": hit.chunk_id, "doc_id": hit.doc_id, "score": hit.score,
            "start": hit.start, "end": hit.end, "metadata": hit.metadata, "text": hit.text}


def _hit_line(hit: Hit, rank: int) -> str:
    text = " ".join(hit.text.split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{rank:>3}. {hit.score:.4f}  {hit.doc_id} [{hit.start}:{hit.end}]  {text}"


def read_queries(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(id, text) of each line of a BEIR-style queries JSONL file."""
    out: list[tuple[str, str]] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("_id"), str | int) \
                or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: a query needs '_id' and 'text', got "
                             f"{line[:80]!r}")
        out.append((str(record["_id"]), record["text"]))
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def _run_queries(args: argparse.Namespace,
                 search: Callable[[str, int, dict[str, Any] | None], list[Hit]],
                 filter: dict[str, Any] | None) -> None:
    from llmsys.rag.metrics import rank, write_trec_run
    from llmsys.rag.retrieval import doc_ranking

    queries = read_queries(args.queries)
    depth = args.depth if args.depth is not None else max(100, 3 * args.top_k)
    if depth < args.top_k:
        raise ValueError(f"--depth ({depth}) must be at least --top-k ({args.top_k})")
    run: dict[str, dict[str, float]] = {}
    latencies = []
    for qid, text in queries:
        started = time.perf_counter()
        ranking = doc_ranking(search(text, depth, filter))
        latencies.append(time.perf_counter() - started)
        run[qid] = {doc_id: ranking[doc_id] for doc_id in rank(ranking)[:args.top_k]}
    write_trec_run(run, args.run if args.run else sys.stdout, tag=args.tag)
    p50 = sorted(latencies)[len(latencies) // 2] * 1000
    print(f"{len(queries)} queries, median {p50:.1f} ms per query"
          + (f"; run written to {args.run}" if args.run else ""), file=sys.stderr)


def cmd_answer(args: argparse.Namespace) -> None:
    from llmsys.rag.answer import RAG

    with open_store(args) as store:
        search = build_search(args, store)
        rag = RAG(_Searcher(search), _chat_model(args, "answer"), k=args.top_k,
                  min_score=args.min_score, max_context_chars=args.max_context_chars,
                  store=store,
                  min_similarity=args.min_similarity if args.min_similarity >= 0 else None)
        result = rag.answer(args.question, parse_filter(args.filter))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    print(result.text)
    for citation in result.citations:
        print(f"[{citation.number}] {citation.title or citation.doc_id} ({citation.source}) "
              f"chars {citation.start}-{citation.end}"
              + (f", page {citation.page}" if citation.page else ""))


class _Searcher:
    """A search function as an object with `search(query, k, filter)`."""

    def __init__(self, search: Callable[[str, int, dict[str, Any] | None], list[Hit]]):
        self._search = search

    def search(self, query: str, k: int, filter: dict[str, Any] | None = None) -> list[Hit]:
        return self._search(query, k, filter)


def cmd_eval(args: argparse.Namespace) -> None:
    from llmsys.rag.evaluate import run

    run(args)


def cmd_info(args: argparse.Namespace) -> None:
    from llmsys.rag.store import Store

    path = Path(args.db)
    if not path.is_file():
        raise ValueError(f"--db {path}: no such store file")
    embedder = _cached(args.embed_base_url, args.embed_model, args.embed_api_key, path)
    started = time.perf_counter()
    with Store(path, embedder) as store:
        opened = time.perf_counter() - started
        report = store.check()
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    print(json.dumps({"db": str(path), "documents": report.documents, "chunks": report.chunks,
                      "vectors": report.vectors, "bytes": size, "open_s": round(opened, 4),
                      "ok": report.ok, "problems": list(report.problems)}))
    if not report.ok:
        raise ValueError(f"{path} is inconsistent: {'; '.join(report.problems)}")


def cmd_delete(args: argparse.Namespace) -> None:
    with open_store(args) as store:
        for doc_id in args.doc_ids:
            if store.content_hash(doc_id) is None:
                print(f"{doc_id}: not stored")
                continue
            print(f"{doc_id}: deleted with {store.delete(doc_id)} chunks")


def user_errors(command: Callable[[argparse.Namespace], None]
                ) -> Callable[[argparse.Namespace], None]:
    """`command` with the errors a user causes (a store made with another embedder, an
    unreachable endpoint) turned into ValueError, which `llmsys` prints in one line."""
    def run(args: argparse.Namespace) -> None:
        from llmsys.agent.chat_model import ModelError
        from llmsys.rag.embeddings import EmbeddingError
        from llmsys.rag.store import StoreError
        try:
            command(args)
        except (StoreError, EmbeddingError, ModelError) as e:
            raise ValueError(str(e)) from None
    return run
