"""A Qdrant adapter offering the parts of the SQLite `Store` that retrieval and ingestion use.

    from llmsys.rag.qdrant_store import QdrantStore
    from llmsys.rag.retrieval import Retriever
    with QdrantStore("qdrant-data/", "docs", embedder) as store:    # or ":memory:", a URL,
        store.upsert(document, chunker.split(document.text))     # or a QdrantClient
        store.search_dense("heat transfer", k=10, filter={"lang": ["en", "de"]})
        store.search_bm25("separated flow", k=10)
        store.reweight_bm25()          # after a bulk ingestion: BM25 exact again (see below)
        Retriever(store, mode="hybrid").search("separated flow", k=5)

`client_or_location` is a `qdrant_client.QdrantClient` (kept open by `close()`), ":memory:",
an http(s) URL of a server, or a folder for qdrant-client's local mode (its parent must
exist). Records are those of `llmsys.rag.store` (`Hit`, `UpsertResult`, `StoredChunk`,
`StoredDocument`) and chunk ids are `store.chunk_id`, so results compare one to one.

One collection holds three kinds of points (payload field `kind`):
- "chunk": point id = uuid5 of the chunk id; a dense vector "dense" (cosine), a sparse
  vector "bm25"; payload chunk_id, doc_id, source, title, ord, text, start, end, metadata
  (the chunk's), length (in analysed terms) and `fields`: the values filters compare (the
  chunk's metadata over the document's, as `Store` resolves them).
- "document": no vectors; doc_id, source, title, content_hash, metadata, ingested_at.
- "meta": no vectors; schema version, embedder name and dim, analyzer, k1, b and avgdl.
  Opening a collection made with another embedder, analyzer or k1/b raises `StoreError`.

Writes. Qdrant has no multi-operation transactions, so `upsert` orders its steps to make
every intermediate state safe: (1) points for new chunks are added and kept chunks get
their new position and metadata, (2) chunks no longer in the document are deleted, (3) the
document point with the new content hash is written last, as the commit marker. A reader may
briefly see old and new chunks of a changed document together, but never the document
without chunks. If a writer dies between steps, the marker still holds the old hash, so
re-ingesting the document redoes the upsert and removes the leftovers (already added chunks
are not embedded again). `delete` removes the marker first, then the chunks. An unchanged
content hash makes `upsert` a no-op, as in `Store`. One writer per document at a time.

Filters mean what they mean in `Store`: keys "doc_id", "source", "title" or metadata keys
(chunk value, else document value), a value or a list of allowed values, all keys required.
Numbers compare numerically (1 == 1.0) and booleans as 0/1, as in SQLite; None matches a
missing or null value.

BM25 runs on Qdrant sparse vectors. A term's index is the first 4 bytes of its blake2b hash;
a chunk's value for a term is the BM25 term-frequency part tf / (tf + k1 (1 - b + b dl /
avgdl)), a query's value its count in the query, and the collection's IDF modifier
multiplies by ln(1 + (N - df + 0.5) / (df + 0.5)) at query time over all chunks: the
"lucene" formula of `BM25Index`, the only method supported. What differs from the exact
index: avgdl is frozen into the vectors when they are written (taken from `avgdl=`, else from
the first document upserted into the collection), while the index uses the current mean;
and two terms whose hashes collide share one index (expected ~1 collision pair in 100k
distinct terms). `reweight_bm25()` sets avgdl to the current mean chunk length and rewrites
every sparse vector; right after it, BM25 scores equal `BM25Index`'s (tested to 1e-5) unless
hashes collide. How far a frozen avgdl moves the ranking depends on how far it is from the
true mean: `tests/rag/test_qdrant_store.py` requires a mean top-10 overlap with
`Store.search_bm25` of at least 0.8 before `reweight_bm25()` and equal rankings after it
(one-off checks, not kept as a script, gave 0.99 with avgdl 40.1 frozen against 36.0 true,
and 0.81 with 8.0 against 34.6).

Differences from `Store`: no `check()`; dense search has no 4096 cap; the local mode keeps
everything in memory, allows one client per folder and scores vectors reloaded from a folder
in float64 (fresh ones in float32: scores may differ in the 8th digit); on a server, IDF
statistics may count deleted points until Qdrant optimises its segments, and `kind`/`doc_id`
get keyword payload indexes when the collection is created. Not thread-safe: one store per
thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmsys.rag.bm25 import Analyzer, BM25Params
from llmsys.rag.checks import check_int
from llmsys.rag.chunking import Chunk
from llmsys.rag.embeddings import embedder_name
from llmsys.rag.readers import SourceDocument
from llmsys.rag.store import (
    DOCUMENT_COLUMNS,
    Hit,
    PlannedChunk,
    StoredChunk,
    StoredDocument,
    StoreError,
    UpsertResult,
    embed_checked,
    plan_chunks,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from llmsys.agent.memory import Embedder

__all__ = ["QdrantStore", "chunk_point_id", "qdrant_filter", "sparse_query", "sparse_terms",
           "term_index"]

SCHEMA_VERSION = 1
DENSE = "dense"
SPARSE = "bm25"
BATCH = 256
_NAMESPACE = uuid.UUID("b80726b0-11aa-48c6-a8e8-ea066be32751")
_META_ID = str(uuid.uuid5(_NAMESPACE, "meta"))
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-.]+$")
_SCALARS = (str, int, float, bool, type(None))
_HIT_FIELDS = ["chunk_id", "doc_id", "text", "start", "end", "metadata"]
_EXTRA = "pip install 'llmsys[vectors]'"


def _models() -> Any:
    try:
        from qdrant_client import models
    except ImportError as e:
        raise ImportError(f"QdrantStore needs qdrant-client: {_EXTRA}") from e
    return models


# ----------------------------------------------------------------------------- ids and vectors

def chunk_point_id(cid: str) -> str:
    """The Qdrant point id (a UUID string) of a chunk id."""
    return str(uuid.uuid5(_NAMESPACE, "chunk:" + cid))


def _document_point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "document:" + doc_id))


def term_index(term: str) -> int:
    """The sparse-vector index of a term: a stable 32-bit hash (same in every process)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8", "surrogatepass"),
                                          digest_size=4).digest(), "big")


def sparse_terms(terms: list[str], params: BM25Params, avgdl: float) -> tuple[list[int],
                                                                               list[float]]:
    """(indices, values) of a chunk's sparse vector: per distinct term, the BM25 term-frequency
    part for a chunk of `len(terms)` terms; colliding terms add up."""
    counts = Counter(terms)
    tfs = np.array(list(counts.values()), dtype=np.float64)
    values = params.tfc(tfs, np.full(len(tfs), len(terms)), avgdl)
    summed: dict[int, float] = {}
    for term, value in zip(counts, values.tolist(), strict=True):
        idx = term_index(term)
        summed[idx] = summed.get(idx, 0.0) + value
    return list(summed), list(summed.values())


def sparse_query(terms: list[str]) -> tuple[list[int], list[float]]:
    """(indices, values) of a query's sparse vector: each term's count in the query."""
    summed: Counter[int] = Counter(term_index(t) for t in terms)
    return list(summed), [float(v) for v in summed.values()]


# ----------------------------------------------------------------------------- checks



def _jsonable(value: dict[str, Any], what: str) -> dict[str, Any]:
    """`value` as it comes back from JSON (tuples become lists), or StoreError."""
    if not isinstance(value, dict):
        raise StoreError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serialisable: {e}") from e


def _filter_values(key: object, wanted: object) -> list[Any]:
    """The allowed values of one filter key, checked like `Store` checks them."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"filter key must be a str of letters, digits, '_', '-' or '.', "
                         f"got {key!r}")
    values = list(wanted) if isinstance(wanted, list | tuple | set | frozenset) else [wanted]
    for value in values:
        if not isinstance(value, _SCALARS) or (isinstance(value, float)
                                               and not math.isfinite(value)):
            raise ValueError(f"filter value for {key!r} must be a str, int, finite float, bool "
                             f"or None (or a list of them), got {value!r}")
    return values


def _filter_field(value: Any) -> Any:
    """A metadata value as filters compare it: bools as 0/1, lists and dicts as JSON text
    (what SQLite's json_extract gives), scalars as they are."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _filter_fields(doc_meta: dict[str, Any], chunk_meta: dict[str, Any]) -> dict[str, Any]:
    """The chunk's metadata over the document's, nulls left out (they match None)."""
    merged = {k: v for k, v in doc_meta.items() if v is not None}
    merged.update({k: v for k, v in chunk_meta.items() if v is not None})
    return {k: _filter_field(v) for k, v in merged.items()}


def _condition(models: Any, path: str, value: Any) -> Any:
    if value is None:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=path))
    if isinstance(value, str):
        return models.FieldCondition(key=path, match=models.MatchValue(value=value))
    number = int(value) if isinstance(value, bool) else value
    return models.FieldCondition(key=path, range=models.Range(gte=number, lte=number))


def qdrant_filter(filter: dict[str, Any] | None) -> tuple[Any, bool]:
    """(Qdrant `Filter` or None, whether anything can match) for a `Store`-style filter."""
    if filter is None:
        return None, True
    if not isinstance(filter, dict):
        raise ValueError(f"filter must be a dict or None, got {type(filter).__name__}")
    models = _models()
    must = []
    for key, wanted in filter.items():
        values = _filter_values(key, wanted)
        if not values:
            return None, False
        path = key if key in DOCUMENT_COLUMNS else f'fields."{key}"'
        conditions = [_condition(models, path, v) for v in values]
        must.append(conditions[0] if len(conditions) == 1 else models.Filter(should=conditions))
    return (models.Filter(must=must) if must else None), True


# ----------------------------------------------------------------------------- plumbing

def _open_client(client_or_location: Any) -> tuple[QdrantClient, bool]:
    """(client, whether this store owns it and closes it)."""
    try:
        from qdrant_client import QdrantClient
    except ImportError as e:
        raise ImportError(f"QdrantStore needs qdrant-client: {_EXTRA}") from e
    if isinstance(client_or_location, QdrantClient):
        return client_or_location, False
    if not isinstance(client_or_location, str | Path):
        raise TypeError("client_or_location must be a QdrantClient, ':memory:', an http(s) URL "
                        f"or a folder path, got {type(client_or_location).__name__}")
    location = str(client_or_location)
    if location == ":memory:":
        return QdrantClient(":memory:"), True
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location), True
    folder = Path(location)
    if not folder.parent.is_dir() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"{location!r} must be a folder (existing, or to be created inside "
                         "an existing one) for Qdrant's local mode")
    return QdrantClient(path=location), True


def _analyzer_settings(analyzer: Analyzer) -> dict[str, Any]:
    stopwords = None if analyzer.stopwords is None else sorted(analyzer.stopwords)
    return {"stopwords": stopwords, "stemmer": analyzer.stemmer,
            "lowercase": analyzer.lowercase}


def _check_avgdl(avgdl: float | None) -> None:
    if avgdl is None:
        return
    if (isinstance(avgdl, bool) or not isinstance(avgdl, int | float)
            or not math.isfinite(avgdl) or avgdl <= 0):
        raise ValueError(f"avgdl must be a finite number > 0 or None, got {avgdl!r}")


# ----------------------------------------------------------------------------- the store

class QdrantStore:
    """Chunks with dense and BM25 sparse vectors in a Qdrant collection (see module)."""

    def __init__(self, client_or_location: Any, collection: str, embedder: Embedder,
                 analyzer: Analyzer | None = None, params: BM25Params | None = None,
                 avgdl: float | None = None) -> None:
        dim = getattr(embedder, "dim", None)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise StoreError(f"embedder.dim must be an int >= 1, got {dim!r}")
        if not isinstance(collection, str) or not _KEY_RE.match(collection):
            raise ValueError(f"collection must be a non-empty str of letters, digits, '_', '-' "
                             f"or '.', got {collection!r}")
        self.params = params if params is not None else BM25Params()
        if not isinstance(self.params, BM25Params) or self.params.method != "lucene":
            raise ValueError(f"params must be BM25Params with method 'lucene' (the idf Qdrant "
                             f"computes), got {self.params!r}")
        _check_avgdl(avgdl)
        self.analyzer = analyzer if analyzer is not None else Analyzer()
        self.embedder = embedder
        self.collection = collection
        self.client, self._owned = _open_client(client_or_location)
        try:
            self._open_collection(dim, avgdl)
        except BaseException as e:
            self.close()
            from qdrant_client.http.exceptions import ApiException
            if isinstance(e, ApiException):  # unreachable server, refused request
                raise StoreError(f"Qdrant at {client_or_location!r} (collection "
                                 f"{collection!r}): {e}") from None
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client if this store opened it (a client passed in stays open)."""
        if self._owned:
            self.client.close()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _settings(self, dim: int) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "embedder_name": embedder_name(self.embedder),
                "embedder_dim": dim, "analyzer": _analyzer_settings(self.analyzer),
                "k1": float(self.params.k1), "b": float(self.params.b)}

    def _open_collection(self, dim: int, avgdl: float | None) -> None:
        models = _models()
        if not self.client.collection_exists(self.collection):
            self._create_collection(models, dim)
            self._put_meta({**self._settings(dim), "avgdl": avgdl})
            return
        meta = self._meta()
        if meta is None:
            raise StoreError(f"collection {self.collection!r} exists but was not made by "
                             "QdrantStore (it has no meta point); use another collection name")
        for key, value in self._settings(dim).items():
            if meta.get(key) != value:
                raise StoreError(f"collection {self.collection!r} was made with {key} = "
                                 f"{meta.get(key)!r}, but this store was opened with {key} = "
                                 f"{value!r}; open it with the same embedder, analyzer and "
                                 "params, or use another collection")
        stored = meta.get("avgdl")
        if avgdl is not None and stored is not None and stored != avgdl:
            raise StoreError(f"collection {self.collection!r} has avgdl = {stored}; pass "
                             f"avgdl=None, or call reweight_bm25({avgdl}) to change it")
        if avgdl is not None and stored is None:
            self._put_meta({**meta, "avgdl": float(avgdl)})

    def _create_collection(self, models: Any, dim: int) -> None:
        self.client.create_collection(
            self.collection,
            vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(
                modifier=models.Modifier.IDF)})
        with warnings.catch_warnings():  # local mode: indexes are a no-op and warn so
            warnings.simplefilter("ignore", UserWarning)
            for field_name in ("kind", "doc_id"):
                self.client.create_payload_index(self.collection, field_name,
                                                 models.PayloadSchemaType.KEYWORD)

    def _meta(self) -> dict[str, Any] | None:
        points = self.client.retrieve(self.collection, [_META_ID], with_payload=True)
        return dict(points[0].payload) if points else None

    def _put_meta(self, payload: dict[str, Any]) -> None:
        models = _models()
        self.client.upsert(self.collection, [models.PointStruct(
            id=_META_ID, vector={}, payload={**payload, "kind": "meta"})], wait=True)

    # -- writing --------------------------------------------------------------------------

    def upsert(self, document: SourceDocument, chunks: list[Chunk]) -> UpsertResult:
        """Store `document` split into `chunks` (offsets into `document.text`), replacing what
        it had (new chunks first, stale ones next, the document's hash last); nothing happens
        if its content hash is the stored one."""
        if not isinstance(document, SourceDocument):
            raise TypeError(f"document must be a SourceDocument, got {type(document).__name__}")
        if self._stored_hash(document.doc_id) == document.content_hash:
            return UpsertResult(0, 0, unchanged=True)
        planned = plan_chunks(document, chunks, self.analyzer)
        old = set(self._chunk_ids_of(document.doc_id))
        added = [p for p in planned if p.chunk_id not in old]
        kept = [p for p in planned if p.chunk_id in old]
        removed = sorted(old - {p.chunk_id for p in planned})
        vectors = embed_checked(self.embedder, [p.chunk.text for p in added])
        avgdl = self._avgdl_for(planned)
        self._add_chunks(document, added, vectors, avgdl)
        self._refresh_kept(document, kept)
        self._delete_points([chunk_point_id(cid) for cid in removed])
        self._put_document(document)
        return UpsertResult(len(added), len(removed), unchanged=False)

    def delete(self, doc_id: str) -> int:
        """Remove a document (its marker first, then its chunks); returns the number of chunks
        removed (0 if the document was not stored)."""
        if not isinstance(doc_id, str):
            raise TypeError(f"doc_id must be a str, got {type(doc_id).__name__}")
        removed = self._chunk_ids_of(doc_id)
        self._delete_points([_document_point_id(doc_id)])
        self._delete_points([chunk_point_id(cid) for cid in removed])
        return len(removed)

    def reweight_bm25(self, avgdl: float | None = None) -> float:
        """Rewrite every chunk's sparse vector with `avgdl` (default: the current mean chunk
        length), making BM25 scores those of the exact index again; returns the avgdl used."""
        _check_avgdl(avgdl)
        if avgdl is None:
            lengths = [int(p.payload["length"]) for p in self._scroll(self._kind("chunk"),
                                                                      ["length"])]
            avgdl = float(np.mean(lengths)) if sum(lengths) else 1.0
        self._put_meta({**(self._meta() or {}), "avgdl": float(avgdl)})
        models = _models()
        batch: list[Any] = []
        for p in self._scroll(self._kind("chunk"), ["text"]):
            terms = self.analyzer.analyze(p.payload["text"])
            batch.append(models.PointVectors(id=p.id, vector={SPARSE: self._sparse(terms,
                                                                                    avgdl)}))
            if len(batch) == BATCH:
                self.client.update_vectors(self.collection, batch, wait=True)
                batch = []
        if batch:
            self.client.update_vectors(self.collection, batch, wait=True)
        return float(avgdl)

    def _avgdl_for(self, planned: list[PlannedChunk]) -> float:
        """The collection's avgdl; the first document with terms sets it when unset."""
        meta = self._meta() or {}
        if meta.get("avgdl") is not None:
            return float(meta["avgdl"])
        lengths = [len(p.terms) for p in planned]
        if not sum(lengths):
            return 1.0  # no terms, so no values depend on it
        avgdl = float(np.mean(lengths))
        self._put_meta({**meta, "avgdl": avgdl})
        return avgdl

    def _sparse(self, terms: list[str] | tuple[str, ...], avgdl: float) -> Any:
        indices, values = sparse_terms(list(terms), self.params, avgdl)
        return _models().SparseVector(indices=indices, values=values)

    def _chunk_payload(self, document: SourceDocument, p: PlannedChunk) -> dict[str, Any]:
        c = p.chunk
        chunk_meta = _jsonable(c.metadata, "chunk metadata")
        doc_meta = _jsonable(document.metadata, "document metadata")
        return {"kind": "chunk", "chunk_id": p.chunk_id, "doc_id": document.doc_id,
                "source": document.source, "title": document.title, "ord": p.ord,
                "text": c.text, "start": c.start, "end": c.end, "metadata": chunk_meta,
                "length": len(p.terms), "fields": _filter_fields(doc_meta, chunk_meta)}

    def _add_chunks(self, document: SourceDocument, added: list[PlannedChunk],
                    vectors: np.ndarray, avgdl: float) -> None:
        models = _models()
        points = [models.PointStruct(
            id=chunk_point_id(p.chunk_id), payload=self._chunk_payload(document, p),
            vector={DENSE: vector.tolist(), SPARSE: self._sparse(p.terms, avgdl)})
            for p, vector in zip(added, vectors, strict=True)]
        for start in range(0, len(points), BATCH):
            self.client.upsert(self.collection, points[start:start + BATCH], wait=True)

    def _refresh_kept(self, document: SourceDocument, kept: list[PlannedChunk]) -> None:
        """New position, metadata and document fields for chunks that survive an edit."""
        models = _models()
        ops = [models.OverwritePayloadOperation(overwrite_payload=models.SetPayload(
            payload=self._chunk_payload(document, p), points=[chunk_point_id(p.chunk_id)]))
            for p in kept]
        for start in range(0, len(ops), BATCH):
            self.client.batch_update_points(self.collection, ops[start:start + BATCH],
                                            wait=True)

    def _delete_points(self, point_ids: list[str]) -> None:
        models = _models()
        for start in range(0, len(point_ids), BATCH):
            self.client.delete(self.collection, models.PointIdsList(
                points=point_ids[start:start + BATCH]), wait=True)

    def _put_document(self, document: SourceDocument) -> None:
        models = _models()
        payload = {"kind": "document", "doc_id": document.doc_id, "source": document.source,
                   "title": document.title, "content_hash": document.content_hash,
                   "metadata": _jsonable(document.metadata, "document metadata"),
                   "ingested_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.client.upsert(self.collection, [models.PointStruct(
            id=_document_point_id(document.doc_id), vector={}, payload=payload)], wait=True)

    # -- reading --------------------------------------------------------------------------

    def _kind(self, kind: str, doc_id: str | None = None) -> Any:
        models = _models()
        must = [models.FieldCondition(key="kind", match=models.MatchValue(value=kind))]
        if doc_id is not None:
            must.append(models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id)))
        return models.Filter(must=must)

    def _scroll(self, scroll_filter: Any, payload: list[str] | bool) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, scroll_filter=scroll_filter,
                                                limit=BATCH, offset=offset,
                                                with_payload=payload, with_vectors=False)
            yield from points
            if offset is None:
                return

    def _stored_hash(self, doc_id: str) -> str | None:
        points = self.client.retrieve(self.collection, [_document_point_id(doc_id)],
                                      with_payload=["content_hash"])
        return points[0].payload.get("content_hash") if points else None

    def _chunk_ids_of(self, doc_id: str) -> list[str]:
        points = self._scroll(self._kind("chunk", doc_id), ["chunk_id", "ord"])
        pairs = sorted((p.payload["ord"], p.payload["chunk_id"]) for p in points)
        return [cid for _, cid in pairs]

    def count(self) -> int:
        """Number of chunks stored."""
        return int(self.client.count(self.collection, count_filter=self._kind("chunk"),
                                     exact=True).count)

    def documents(self) -> list[StoredDocument]:
        """Every stored document (those whose upsert finished), by doc id."""
        counts = Counter(p.payload["doc_id"] for p in self._scroll(self._kind("chunk"),
                                                                   ["doc_id"]))
        docs = [p.payload for p in self._scroll(self._kind("document"), True)]
        return [StoredDocument(d["doc_id"], d["source"], d.get("title"), d["content_hash"],
                               d["metadata"], d["ingested_at"], counts.get(d["doc_id"], 0))
                for d in sorted(docs, key=lambda d: d["doc_id"])]

    def get_chunk(self, chunk_id: str) -> StoredChunk:
        """The chunk with this id; raises KeyError if there is none."""
        if not isinstance(chunk_id, str):
            raise TypeError(f"chunk_id must be a str, got {type(chunk_id).__name__}")
        points = self.client.retrieve(self.collection, [chunk_point_id(chunk_id)],
                                      with_payload=True)
        if not points or points[0].payload.get("chunk_id") != chunk_id:
            raise KeyError(f"no chunk {chunk_id!r} in collection {self.collection!r}")
        return _stored_chunk(points[0].payload)

    def chunks_of(self, doc_id: str) -> list[StoredChunk]:
        """The chunks of a document in order (empty if it is not stored)."""
        chunks = [_stored_chunk(p.payload) for p in self._scroll(self._kind("chunk", doc_id),
                                                                 True)]
        return sorted(chunks, key=lambda c: (c.ord, c.chunk_id))

    # -- searching ------------------------------------------------------------------------

    def search_bm25(self, query: str, k: int, filter: dict[str, Any] | None = None
                    ) -> list[Hit]:
        """Top `k` chunks by BM25 over Qdrant sparse vectors (see module for how close the
        scores are to `BM25Index`'s); chunks without any query term are left out."""
        check_int("k", k, 1)
        _check_query(query)
        qfilter, possible = qdrant_filter(filter)
        terms = self.analyzer.analyze(query)
        if not possible or not terms:
            return []
        indices, values = sparse_query(terms)
        vector = _models().SparseVector(indices=indices, values=values)
        return [h for h in self._query(vector, SPARSE, k, qfilter) if h.score > 0]

    def search_dense(self, query: str, k: int, filter: dict[str, Any] | None = None
                     ) -> list[Hit]:
        """Top `k` chunks by cosine similarity to the query embedding."""
        check_int("k", k, 1)
        _check_query(query)
        qfilter, possible = qdrant_filter(filter)
        if not possible:
            return []
        vector = embed_checked(self.embedder, [query])[0].tolist()
        return self._query(vector, DENSE, k, qfilter)

    def _query(self, vector: Any, using: str, k: int, qfilter: Any) -> list[Hit]:
        """The top k hits, fetched past k while the k-th score is tied, so that ties are
        broken by chunk id (as in `Store`) rather than by Qdrant's order."""
        limit = k + 1
        while True:
            points = self.client.query_points(self.collection, query=vector, using=using,
                                              query_filter=qfilter, limit=limit,
                                              with_payload=_HIT_FIELDS).points
            if len(points) < limit or points[-1].score != points[k - 1].score:
                break
            limit *= 2
        ranked = sorted(points, key=lambda p: (-p.score, p.payload["chunk_id"]))[:k]
        return [Hit(p.payload["chunk_id"], p.payload["doc_id"], float(p.score),
                    p.payload["text"], p.payload["start"], p.payload["end"],
                    p.payload["metadata"]) for p in ranked]


def _check_query(query: object) -> None:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")


def _stored_chunk(payload: dict[str, Any]) -> StoredChunk:
    return StoredChunk(payload["chunk_id"], payload["doc_id"], payload["ord"], payload["text"],
                       payload["start"], payload["end"], payload["metadata"])
