"""Dense search in the RAG store: sqlite-vec exact KNN against the FAISS HNSW vector index.

    python benchmarks/rag_faiss.py [--n 100000] [--dim 384] [--latent 32] [--m 32]
                                   [--ef-construction 100] [--ef-search 32 64 128]

`--n` clustered random unit vectors (`--dim` wide) are ingested into a `Store` (documents of
100 chunks, one of 10 groups each). The vectors lie near a random `--latent`-dimensional
subspace, with 200 clusters in it, plus a little isotropic noise, as text embeddings do;
`--latent 0` makes isotropic clusters in all `--dim` dimensions, the hard case for HNSW.
Then, on one thread: the HNSW build (the first open with the index), the save on close, the
reload of the side file, and for each `--ef-search` the median query latency and recall@10
against exact numpy brute force: unfiltered, with a filter allowing 10% of the chunks (one
group: searched in the graph) and one allowing 1% (ten documents: scored exactly); and the
same latencies of the store's exact sqlite-vec KNN. Prints medians; writes
benchmarks/results/rag_faiss.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from llmsys.rag.chunking import Chunk
from llmsys.rag.faiss_index import FaissHNSWIndex, HNSWConfig, side_path
from llmsys.rag.readers import SourceDocument
from llmsys.rag.store import Store

PER_DOC = 100
GROUPS = 10
K = 10


class TableEmbedder:
    """"v<i>" -> row i of the corpus, "q<i>" -> row i of the queries."""

    name = "benchmark-table"

    def __init__(self, vectors: np.ndarray, queries: np.ndarray) -> None:
        self.vectors, self.queries, self.dim = vectors, queries, vectors.shape[1]

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = [(self.vectors if t[0] == "v" else self.queries)[int(t[1:])] for t in texts]
        return np.array(rows, dtype=np.float32)


def clustered(n: int, dim: int, latent: int, seed: int) -> np.ndarray:
    """Clustered unit vectors near one random `latent`-dim subspace (0: isotropic)."""
    shape = np.random.default_rng(0)  # the same clusters and subspace for every call
    rng = np.random.default_rng(seed)
    width = latent or dim
    centres = shape.standard_normal((200, width))
    basis = shape.standard_normal((width, dim)) / np.sqrt(width) if latent else np.eye(dim)
    points = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, width))
    points = points @ basis + (0.1 * rng.standard_normal((n, dim)) if latent else 0.0)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def ingest(store: Store, n: int) -> None:
    for d in range(n // PER_DOC):
        words = [f"v{i}" for i in range(d * PER_DOC, (d + 1) * PER_DOC)]
        text, chunks, start = " ".join(words), [], 0
        for word in words:
            chunks.append(Chunk(word, start, start + len(word)))
            start += len(word) + 1
        store.upsert(SourceDocument(f"d{d}", text, None, f"d{d}", {"group": d % GROUPS}),
                     chunks)


FILTERS: dict[str, dict | None] = {
    "": None, "_filter10": {"group": 0}, "_filter1": {"doc_id": [f"d{d}" for d in range(10)]}}


def allowed_rows(n: int, filter: dict | None) -> np.ndarray:
    docs = np.arange(n) // PER_DOC
    if filter is None:
        return np.ones(n, bool)
    return docs % GROUPS == 0 if "group" in filter else docs < 10


def exact_top(vectors: np.ndarray, query: np.ndarray, allowed: np.ndarray) -> set[int]:
    scores = np.where(allowed, vectors @ query, -np.inf)
    return set(np.argsort(-scores)[:K].tolist())


def run_queries(store: Store, queries: np.ndarray, vectors: np.ndarray,
                filter: dict | None) -> tuple[float, float]:
    """Median latency (ms) and recall@K against exact brute force."""
    allowed = allowed_rows(len(vectors), filter)
    times, found = [], 0
    for qi in range(len(queries)):
        start = time.perf_counter()
        hits = store.search_dense(f"q{qi}", k=K, filter=filter)
        times.append(time.perf_counter() - start)
        got = {int(re.fullmatch(r"v(\d+)", h.text)[1]) for h in hits}
        found += len(got & exact_top(vectors, queries[qi], allowed))
    return 1000 * statistics.median(times), found / (K * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/rag_faiss.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    vectors = clustered(args.n, args.dim, args.latent, seed=1)
    queries = clustered(args.queries, args.dim, args.latent, seed=2)
    embedder = TableEmbedder(vectors, queries)
    out: dict = {"n": args.n, "dim": args.dim, "latent": args.latent, "m": args.m,
                 "ef_construction": args.ef_construction, "k": K}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        start = time.perf_counter()
        with Store(db, embedder) as store:
            ingest(store, args.n)
            out["ingest_s"] = time.perf_counter() - start
            for name, filt in FILTERS.items():
                out[f"sqlite_vec{name}_ms"], _ = run_queries(store, queries, vectors, filt)
        start = time.perf_counter()
        Store(db, embedder).close()
        out["open_without_index_s"] = time.perf_counter() - start
        shape = {"m": args.m, "ef_construction": args.ef_construction}
        start = time.perf_counter()
        store = Store(db, embedder, vector_index=FaissHNSWIndex(HNSWConfig(**shape)))
        out["hnsw_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        store.close()
        out["save_s"] = time.perf_counter() - start
        out["side_file_mb"] = side_path(db).stat().st_size / 2**20
        for ef in args.ef_search:
            index = FaissHNSWIndex(HNSWConfig(ef_search=ef, **shape))
            start = time.perf_counter()
            with Store(db, embedder, vector_index=index) as store:
                out["reopen_s"] = time.perf_counter() - start
                assert index.stats.loaded and index.stats.rebuilds == 0
                for name, filt in FILTERS.items():
                    ms, rec = run_queries(store, queries, vectors, filt)
                    out[f"hnsw_ef{ef}{name}_ms"], out[f"hnsw_ef{ef}{name}_recall"] = ms, rec
    for key, value in out.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
