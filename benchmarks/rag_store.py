"""RAG store benchmark: ingestion throughput, query latency at 10k and 100k chunks, store
size and open time, each next to a peer measured in the same run.

    HF_HUB_OFFLINE=1 python benchmarks/rag_store.py --cranfield DIR [--sizes 10000 100000]

1. Ingestion (real pipeline): the Cranfield abstracts through `RecursiveChunker(64)` and the
   MiniLM embedder into a fresh store (`llmsys.rag.ingest.ingest_documents`), in chunks/s.
   Peer: MiniLM embedding the same chunk texts alone (the ceiling: the store's share is the
   gap between the two).
2. Corpora of N chunks (10k, 100k): each chunk is 4-8 random Cranfield sentences (a fixed
   seed; about 130 words), 10 chunks per document. Chunk vectors are the normalised mean of
   their sentences' MiniLM vectors (the sentences are embedded once; embedding 100k chunks
   would take most of an hour on 2 cores and does not change what is timed). Store writes
   are timed as chunks/s with these precomputed vectors.
3. Open time (median of 5 opens, BM25 statistics loaded) and file size.
4. Latency of `k=10` searches for the 225 Cranfield queries, each query embedded by MiniLM
   inside the timed region for dense and hybrid (as a user's query would be), timed after
   one untimed pass over the queries (steady state; BM25 caches each term's score shares on
   first use, so its first pass is reported too, as "bm25 cold"):
   - llmsys BM25 (`Store.search_bm25`)           vs bm25s `retrieve` (same analysis)
   - llmsys dense, exact sqlite-vec               vs FAISS `IndexFlatIP` (exact)
   - llmsys dense through `FaissHNSWIndex` (M 32, efSearch 128; recall@10 vs exact printed)
   - llmsys hybrid (RRF of top-100 of each)       vs bm25s + FAISS flat + RRF in numpy
   - llmsys hybrid through `FaissHNSWIndex`
   p50 and p95 in ms; the ratio is llmsys / peer at p50 (below 1 means faster).
Results: benchmarks/results/rag_store.json; build files in build/rag-bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmsys.rag.bm25 import ENGLISH_STOPWORDS  # noqa: E402
from llmsys.rag.chunking import Chunk, RecursiveChunker  # noqa: E402
from llmsys.rag.datasets import load_cranfield  # noqa: E402
from llmsys.rag.readers import SourceDocument  # noqa: E402
from llmsys.rag.retrieval import Retriever, reciprocal_rank_fusion  # noqa: E402
from llmsys.rag.store import Hit, Store, chunk_id  # noqa: E402

K = 10
CANDIDATES = 100
EF_SEARCH = 128
BUILD = Path("build/rag-bench")


class TableEmbedder:
    """Known texts -> precomputed vectors; anything else (queries) -> MiniLM."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, minilm, table: dict[str, np.ndarray]) -> None:
        self.minilm, self.table, self.dim = minilm, table, minilm.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.table]
        fresh = dict(zip(missing, self.minilm.embed(missing), strict=True)) if missing else {}
        return np.stack([self.table.get(t, fresh.get(t)) for t in texts]).astype(np.float32)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


def timed(fn, queries: list[str], warm: bool = True) -> tuple[dict[str, float], list]:
    """Latency percentiles of fn over the queries, after one untimed pass over all of them
    (steady state: caches filled, as in a server that has run a while) unless not `warm`."""
    for q in queries if warm else []:
        fn(q)
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - started)
    return percentiles(times), results


# ----------------------------------------------------------------------------- 1. ingestion

def bench_ingestion(collection, minilm) -> dict:
    from llmsys.rag.ingest import ingest_documents

    docs = [SourceDocument(d.id, f"{d.title}\n\n{d.text}", d.title, "cranfield", {})
            for d in collection.documents if d.text.strip()]
    path = BUILD / "ingest.db"
    for p in BUILD.glob("ingest.db*"):
        p.unlink()
    chunker = RecursiveChunker(max_tokens=64)
    texts = [c.text for d in docs for c in chunker.split(d.text)]
    started = time.perf_counter()
    minilm.embed(texts)
    embed_s = time.perf_counter() - started
    with Store(path, minilm) as store:
        report = ingest_documents(store, docs, chunker, progress=True)
    out = {"documents": len(docs), "chunks": report.chunks_added, "seconds": report.seconds,
           "chunks_per_s": report.chunks_per_s, "embed_only_chunks_per_s": len(texts) / embed_s}
    out["ratio"] = out["chunks_per_s"] / out["embed_only_chunks_per_s"]
    print(f"ingestion: {out['chunks_per_s']:.0f} chunks/s through the pipeline, "
          f"{out['embed_only_chunks_per_s']:.0f} chunks/s embedding alone "
          f"(ratio {out['ratio']:.2f})", flush=True)
    return out


# ----------------------------------------------------------------------------- 2. corpora

def sentence_pool(collection) -> list[str]:
    """Cranfield's sentences (its text is lower case, so split at ". " rather than with the
    chunkers' capital-letter rule), 20 to 400 characters long."""
    pool = []
    for d in collection.documents:
        pool += [s.strip() for s in re.split(r"(?<=\.)\s+", d.text) if 20 < len(s.strip()) < 400]
    return sorted(set(pool))


def make_corpus(pool: list[str], pool_vectors: np.ndarray, n_chunks: int, seed: int = 0
                ) -> tuple[list[tuple[SourceDocument, list[Chunk]]], dict[str, np.ndarray]]:
    rng = random.Random(seed)
    docs, table = [], {}
    for d in range(n_chunks // 10):
        parts, chunks, at = [], [], 0
        for _ in range(10):
            picked = [rng.randrange(len(pool)) for _ in range(rng.randint(4, 8))]
            text = " ".join(pool[i] for i in picked)
            chunks.append(Chunk(text, at, at + len(text)))
            vec = pool_vectors[picked].mean(axis=0)
            table[text] = vec / np.linalg.norm(vec)
            parts.append(text)
            at += len(text) + 2
        doc = SourceDocument(f"doc{d:06d}", "\n\n".join(parts), None, "synthetic", {})
        docs.append((doc, chunks))
    return docs, table


def build_store(path: Path, docs, embedder, vector_index=None) -> float:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    started = time.perf_counter()
    with Store(path, embedder, vector_index=vector_index) as store:
        for doc, chunks in docs:
            store.upsert(doc, chunks)
    return time.perf_counter() - started


def open_time(path: Path, embedder) -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        store = Store(path, embedder)
        times.append(time.perf_counter() - started)
        store.close()
    return statistics.median(times)


# ----------------------------------------------------------------------------- 4. peers

class Peer:
    """bm25s over the same analysis, FAISS flat inner product over the same vectors."""

    def __init__(self, docs, table, minilm) -> None:
        import bm25s
        import faiss
        import Stemmer

        self.ids = [chunk_id(doc.doc_id, c.text, c.start, c.end) for doc, cs in docs for c in cs]
        texts = [c.text for _, cs in docs for c in cs]
        self.stemmer = Stemmer.Stemmer("english")
        self.stopwords = sorted(ENGLISH_STOPWORDS)
        tokens = bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer,
                                show_progress=False)
        self.bm25 = bm25s.BM25(k1=1.2, b=0.75)
        self.bm25.index(tokens, show_progress=False)
        vectors = np.stack([table[t] for t in texts]).astype(np.float32)
        self.flat = faiss.IndexFlatIP(vectors.shape[1])
        self.flat.add(vectors)
        self.minilm = minilm
        self.bm25s = bm25s

    def search_bm25(self, query: str, k: int) -> list[tuple[str, float]]:
        tokens = self.bm25s.tokenize([query], stopwords=self.stopwords, stemmer=self.stemmer,
                                     show_progress=False)
        docs, scores = self.bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [(self.ids[i], float(s)) for i, s in zip(docs[0], scores[0], strict=True)
                if s > 0]

    def search_dense(self, query: str, k: int) -> list[tuple[str, float]]:
        q = self.minilm.embed([query]).astype(np.float32)
        scores, rows = self.flat.search(q, k)
        return [(self.ids[i], float(s)) for i, s in zip(rows[0], scores[0], strict=True)]

    def search_hybrid(self, query: str, k: int) -> list[str]:
        lists = [self.search_bm25(query, CANDIDATES), self.search_dense(query, CANDIDATES)]
        as_hits = [[Hit(cid, "", s, "", 0, 0) for cid, s in ranking] for ranking in lists]
        return [h.chunk_id for h in reciprocal_rank_fusion(as_hits, 60)[:k]]


# ----------------------------------------------------------------------------- main

def bench_size(n: int, pool, pool_vectors, minilm, queries: list[str]) -> dict:
    from llmsys.rag.faiss_index import FaissHNSWIndex, HNSWConfig

    docs, table = make_corpus(pool, pool_vectors, n)
    embedder = TableEmbedder(minilm, table)
    path = BUILD / f"store-{n}.db"
    write_s = build_store(path, docs, embedder)
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")
               if not p.name.endswith(".faiss"))
    out: dict = {"chunks": n, "write_chunks_per_s": n / write_s, "bytes": size,
                 "open_s": open_time(path, embedder)}
    print(f"{n} chunks: store writes {out['write_chunks_per_s']:.0f} chunks/s, "
          f"{size / 2**20:.0f} MiB, open {out['open_s'] * 1000:.0f} ms", flush=True)
    peer = Peer(docs, table, minilm)
    latency: dict[str, dict] = {}
    with Store(path, embedder) as store:
        hybrid = Retriever(store, "hybrid", candidates=CANDIDATES)
        latency["bm25 cold (first pass)"], _ = timed(lambda q: store.search_bm25(q, K), queries,
                                                     warm=False)
        latency["bm25"], _ = timed(lambda q: store.search_bm25(q, K), queries)
        latency["bm25 (bm25s)"], _ = timed(lambda q: peer.search_bm25(q, K), queries)
        latency["dense"], exact = timed(lambda q: store.search_dense(q, K), queries)
        latency["dense (faiss flat)"], _ = timed(lambda q: peer.search_dense(q, K), queries)
        latency["hybrid"], _ = timed(lambda q: hybrid.search(q, K), queries)
        latency["hybrid (bm25s + faiss flat)"], _ = timed(lambda q: peer.search_hybrid(q, K),
                                                          queries)
    index = FaissHNSWIndex(HNSWConfig(ef_search=EF_SEARCH))
    started = time.perf_counter()
    with Store(path, embedder, vector_index=index) as store:
        out["hnsw_build_s"] = time.perf_counter() - started
        hybrid = Retriever(store, "hybrid", candidates=CANDIDATES)
        latency["dense hnsw"], approx = timed(lambda q: store.search_dense(q, K), queries)
        latency["hybrid hnsw"], _ = timed(lambda q: hybrid.search(q, K), queries)
    recall = [len({h.chunk_id for h in a} & {h.chunk_id for h in e}) / K
              for a, e in zip(approx, exact, strict=True)]
    out["hnsw_recall@10"] = float(np.mean(recall))
    out["latency"] = latency
    for ours, theirs in (("bm25", "bm25 (bm25s)"), ("dense", "dense (faiss flat)"),
                         ("hybrid", "hybrid (bm25s + faiss flat)"),
                         ("hybrid hnsw", "hybrid (bm25s + faiss flat)")):
        latency[ours]["ratio_vs_peer_p50"] = latency[ours]["p50_ms"] / latency[theirs]["p50_ms"]
    for name, row in latency.items():
        ratio = f"  ratio {row['ratio_vs_peer_p50']:.2f}" if "ratio_vs_peer_p50" in row else ""
        print(f"  {name:<30} p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms{ratio}",
              flush=True)
    print(f"  HNSW recall@10 vs exact {out['hnsw_recall@10']:.3f}, index build "
          f"{out['hnsw_build_s']:.1f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cranfield", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--skip-ingestion", action="store_true")
    args = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    from llmsys.agent.memory import MiniLMEmbedder
    from llmsys.rag.embeddings import CachedEmbedder

    BUILD.mkdir(parents=True, exist_ok=True)
    collection = load_cranfield(args.cranfield)
    minilm = MiniLMEmbedder()
    results: dict = {"k": K, "candidates": CANDIDATES, "cpu_count": os.cpu_count()}
    if not args.skip_ingestion:
        results["ingestion"] = bench_ingestion(collection, minilm)
    pool = sentence_pool(collection)
    cache = CachedEmbedder(minilm, BUILD / "sentences.embeddings")
    pool_vectors = cache.embed(pool).astype(np.float64)
    queries = [q.text for q in collection.queries]
    results["sizes"] = [bench_size(n, pool, pool_vectors, minilm, queries)
                        for n in args.sizes]
    out = Path("benchmarks/results/rag_store.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
