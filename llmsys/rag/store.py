"""The RAG store: documents, chunks, a BM25 index and chunk embeddings in ONE SQLite file.

    from llmsys.rag.bm25 import Analyzer
    from llmsys.rag.store import Store
    with Store("rag.db", embedder) as store:              # embedder: `dim`, `name`, `embed`
        store.upsert(document, chunker.split(document.text))  # -> UpsertResult(added, ...)
        store.search_bm25("separated flow", k=10)             # -> [Hit(chunk_id, ...), ...]
        store.search_dense("heat transfer", k=10, filter={"source": "paper.pdf"})
        store.delete("doc-1")
        store.check().ok                                      # both indexes agree

Tables: `documents` (one row per ingested document, with its content hash), `chunks` (the
chunk text, offsets and metadata; `vec_rowid` is the integer key of its vector),
`chunk_terms` (chunk_id, the JSON term -> count of its analysed text: the statistics
`BM25Index.from_counts` rebuilds the lexical index from when the store is opened; one row
per chunk keeps the file small and the open fast), `vec_chunks` (a sqlite-vec `vec0`
table of float32[dim] embeddings, cosine distance) and `meta` (schema version, embedder name
and dim, analyzer settings). Opening a file made with another schema version, embedder or
analyzer raises `StoreError`.

Writes are atomic. `upsert(document, chunks)` does nothing when the stored document has the
same content hash (so re-ingesting a corpus skips what is already there and a killed ingestion
simply resumes). Otherwise the embeddings of the chunks that are new are computed first, and
then one `BEGIN IMMEDIATE` transaction replaces the document's chunks, term counts and
vectors together, so the lexical and vector indexes never disagree, even after a crash (WAL
journaling). The in-memory BM25 index is updated after each commit, and rebuilt from the
tables when another connection has written to the file (`PRAGMA data_version`).

Chunk ids are sha256 over (doc_id, text, start, end): chunk metadata is ignored, and a chunk
that survives an edit of its document keeps its id and vector.

Filters (`filter=` of both searches) are dicts of key -> value or list of allowed values, all
keys required to match: "doc_id", "source" and "title" match the document columns, any other
key the chunk's metadata value, or else the document's (JSON equality; values are str, int,
float, bool or None). BM25 scores keep the statistics of the whole store; dense search is
exact KNN restricted to the allowed chunks. Dense scores are cosine similarities; dense
search returns at most 4096 hits (the largest k sqlite-vec accepts). Ties are broken by chunk id.

Vector index (optional): `Store(path, embedder, vector_index=FaissHNSWIndex(HNSWConfig(m=32)))`
makes dense search approximate, through a FAISS HNSW graph saved next to the file as
`<path>.faiss` (see `llmsys.rag.faiss_index`). The store opens it (the side file is reused
when it matches the stored vectors, else caught up or rebuilt), tells it what each commit
added and removed, and saves it on `close`; the index itself catches up when another
connection has written. With a filter, it searches only the allowed chunks (exactly when
they are few). Hits and scores are as above, but the top k may miss some true neighbours.

Not thread-safe: one `Store` per thread (several processes may share the file).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmsys.rag.bm25 import Analyzer, BM25Index, BM25Params
from llmsys.rag.checks import check_int
from llmsys.rag.chunking import Chunk
from llmsys.rag.embeddings import embedder_name
from llmsys.rag.faiss_index import FaissHNSWIndex
from llmsys.rag.readers import SourceDocument

if TYPE_CHECKING:
    import apsw

    from llmsys.agent.memory import Embedder

__all__ = ["CheckReport", "Hit", "PlannedChunk", "Store", "StoreError", "StoredChunk",
           "StoredDocument", "UpsertResult", "check_filter", "chunk_id", "embed_checked",
           "plan_chunks"]

SCHEMA_VERSION = 2
DOCUMENT_COLUMNS = ("doc_id", "source", "title")
_SCALARS = (str, int, float, bool, type(None))
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-.]+$")
_PLAN_ATTEMPTS = 3
MAX_KNN_K = 4096  # the largest k sqlite-vec accepts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, title TEXT, content_hash TEXT NOT NULL,
    metadata TEXT NOT NULL, ingested_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    ord INTEGER NOT NULL, text TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    metadata TEXT NOT NULL, vec_rowid INTEGER NOT NULL UNIQUE);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id, ord);
CREATE TABLE IF NOT EXISTS chunk_terms (chunk_id TEXT PRIMARY KEY, counts TEXT NOT NULL);
"""


class StoreError(RuntimeError):
    """A store that cannot be opened or written as asked; the message says why."""


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class UpsertResult:
    """Chunks added and removed by an upsert; `unchanged` when the content hash matched."""

    added: int
    removed: int
    unchanged: bool

    def __post_init__(self) -> None:
        if self.added < 0 or self.removed < 0:
            raise ValueError(f"added and removed must be >= 0, got {self.added}, {self.removed}")


@dataclass(frozen=True)
class Hit:
    """A search result: a chunk of `doc_id` (`text == document.text[start:end]`)."""

    chunk_id: str
    doc_id: str
    score: float
    text: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: `ord` is its position in its document."""

    chunk_id: str
    doc_id: str
    ord: int
    text: str
    start: int
    end: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class StoredDocument:
    """A document row: everything but the text, plus its number of chunks."""

    doc_id: str
    source: str
    title: str | None
    content_hash: str
    metadata: dict[str, Any]
    ingested_at: str
    n_chunks: int


@dataclass(frozen=True)
class CheckReport:
    """What `Store.check` found: counts and a list of broken invariants (empty when ok)."""

    documents: int
    chunks: int
    vectors: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class PlannedChunk:
    """A chunk ready to write: its id, analysed terms and position in the document."""

    chunk_id: str
    ord: int
    chunk: Chunk
    terms: tuple[str, ...]


# ----------------------------------------------------------------------------- helpers

def _counts_json(terms: Sequence[str]) -> str:
    return json.dumps(Counter(terms), ensure_ascii=False, separators=(",", ":"))


def chunk_id(doc_id: str, text: str, start: int, end: int) -> str:
    """The content id of a chunk: sha256 (hex) over doc id, text and offsets."""
    payload = json.dumps([doc_id, text, start, end], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", errors="surrogatepass")).hexdigest()


def _to_json(value: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serialisable: {e}") from e


def plan_chunks(document: SourceDocument, chunks: list[Chunk], analyzer: Analyzer
                ) -> list[PlannedChunk]:
    """Check `chunks` against `document` (offsets, JSON metadata, no duplicates) and give
    each its content id and analysed terms (shared by every store backend)."""
    if not isinstance(document, SourceDocument):
        raise TypeError(f"document must be a SourceDocument, got {type(document).__name__}")
    if not isinstance(chunks, list | tuple):
        raise TypeError(f"chunks must be a list of Chunk, got {type(chunks).__name__}")
    planned: list[PlannedChunk] = []
    for ord_, chunk in enumerate(chunks):
        if not isinstance(chunk, Chunk):
            raise TypeError(f"chunks must be Chunk objects, got {type(chunk).__name__}")
        if document.text[chunk.start:chunk.end] != chunk.text:
            raise StoreError(f"chunk {ord_} of {document.doc_id!r} ({chunk.start}:"
                             f"{chunk.end}) does not match the document text there")
        _to_json(chunk.metadata, f"metadata of chunk {ord_} of {document.doc_id!r}")
        cid = chunk_id(document.doc_id, chunk.text, chunk.start, chunk.end)
        planned.append(PlannedChunk(cid, ord_, chunk, tuple(analyzer.analyze(chunk.text))))
    ids = [p.chunk_id for p in planned]
    if len(set(ids)) != len(ids):
        raise StoreError(f"document {document.doc_id!r} has duplicate chunks (same text and "
                         "offsets)")
    _to_json(document.metadata, f"metadata of {document.doc_id!r}")
    return planned


def embed_checked(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """`embedder.embed(texts)` as float32, checked: shape (len(texts), dim), finite."""
    dim = embedder.dim
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    if vectors.shape != (len(texts), dim) or not np.isfinite(vectors).all():
        raise StoreError(f"{embedder_name(embedder)} returned an array of shape "
                         f"{vectors.shape} (or non-finite values) for {len(texts)} texts; "
                         f"expected ({len(texts)}, {dim}) finite float32")
    return vectors


def _connect(path: Path) -> apsw.Connection:
    try:
        import apsw
        import sqlite_vec
    except ImportError as e:
        raise ImportError("the RAG store needs apsw and sqlite-vec: pip install 'llmsys[rag]'"
                          ) from e
    try:
        conn = apsw.Connection(str(path))
    except apsw.Error as e:
        raise StoreError(f"{path}: cannot open the store file ({e})") from None
    try:
        conn.set_busy_timeout(10_000)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except apsw.Error as e:
        conn.close()
        raise StoreError(f"{path}: not a store file ({e})") from None
    if tables and "meta" not in tables:
        conn.close()
        raise StoreError(f"{path} is an SQLite file without a store's tables; give a new file "
                         "name (or one made by llmsys)")
    return conn


def _analyzer_settings(analyzer: Analyzer) -> str:
    stopwords = None if analyzer.stopwords is None else sorted(analyzer.stopwords)
    return json.dumps({"stopwords": stopwords, "stemmer": analyzer.stemmer,
                       "lowercase": analyzer.lowercase}, sort_keys=True)


def check_filter(filter: dict[str, Any] | None) -> None:
    """Raise ValueError for a filter the searches would refuse (see the module docstring)."""
    _filter_clause(filter)


def _filter_clause(filter: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """SQL condition over `chunks c JOIN documents d` for a filter, and its parameters."""
    if filter is None:
        return "1", []
    if not isinstance(filter, dict):
        raise ValueError(f"filter must be a dict or None, got {type(filter).__name__}")
    clauses: list[str] = []
    params: list[Any] = []
    for key, wanted in filter.items():
        values = list(wanted) if isinstance(wanted, list | tuple | set | frozenset) else [wanted]
        column = _filter_column(key, values)
        others = [v for v in values if v is not None]
        parts = [f"{column} IS NULL"] if len(others) < len(values) else []
        if others:
            parts.append(f"{column} IN ({','.join('?' * len(others))})")
            params.extend(others)
        clauses.append("(" + (" OR ".join(parts) or "0") + ")")
    return " AND ".join(clauses) or "1", params


def _filter_column(key: str, values: list[Any]) -> str:
    """The SQL expression a filter key compares (keys are checked, so they can be inlined)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"filter key must be a str of letters, digits, '_', '-' or '.', "
                         f"got {key!r}")
    for value in values:
        if not isinstance(value, _SCALARS) or (isinstance(value, float)
                                               and not math.isfinite(value)):
            raise ValueError(f"filter value for {key!r} must be a str, int, finite float, bool "
                             f"or None (or a list of them), got {value!r}")
    if key in DOCUMENT_COLUMNS:
        return f"d.{key}"
    path = f"'$.\"{key}\"'"
    return f"coalesce(json_extract(c.metadata, {path}), json_extract(d.metadata, {path}))"


# ----------------------------------------------------------------------------- the store

class Store:
    """Documents, chunks, BM25 statistics and embeddings in one SQLite file (see module)."""

    def __init__(self, path: str | Path, embedder: Embedder, analyzer: Analyzer | None = None,
                 params: BM25Params | None = None,
                 vector_index: FaissHNSWIndex | None = None) -> None:
        dim = getattr(embedder, "dim", None)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise StoreError(f"embedder.dim must be an int >= 1, got {dim!r}")
        if vector_index is not None and not isinstance(vector_index, FaissHNSWIndex):
            raise TypeError(f"vector_index must be a FaissHNSWIndex or None, got "
                            f"{type(vector_index).__name__}")
        self.vector_index = vector_index  # optional approximate index (faiss_index.py)
        self.path = Path(path)
        self.embedder = embedder
        self.analyzer = analyzer if analyzer is not None else Analyzer()
        self.params = params if params is not None else BM25Params()
        self._conn = _connect(self.path)
        try:
            self._init_schema(embedder_name(embedder), dim)
            self._index = self._load_index()
            if vector_index is not None:  # vector index: load its side file or rebuild
                vector_index.open(self._conn, self.path, dim)
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.vector_index is not None:  # vector index: saves its side file
                self.vector_index.close()
        finally:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_schema(self, name: str, dim: int) -> None:
        wanted = {"schema_version": str(SCHEMA_VERSION), "embedder_name": name,
                  "embedder_dim": str(dim), "analyzer": _analyzer_settings(self.analyzer)}
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(_SCHEMA)
            self._conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS vec_chunks USING "
                f"vec0(embedding float[{dim}] distance_metric=cosine)")
            stored = dict(self._conn.execute("SELECT key, value FROM meta"))
            if not stored:
                self._conn.executemany("INSERT INTO meta VALUES (?, ?)", wanted.items())
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        if stored and stored.get("schema_version") != wanted["schema_version"]:
            raise StoreError(f"{self.path} has store schema version "
                             f"{stored.get('schema_version')}; this llmsys reads version "
                             f"{SCHEMA_VERSION}: ingest the documents again into a new file")
        for key, value in stored.items():
            if key in wanted and wanted[key] != value:
                raise StoreError(f"{self.path} was made with {key} = {value}, but this store "
                                 f"was opened with {key} = {wanted[key]}; open it with the "
                                 "same embedder and analyzer, or use a new file")
        self._data_version = self._current_data_version()

    def _current_data_version(self) -> int:
        return int(self._scalar("PRAGMA data_version"))

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _load_index(self) -> BM25Index:
        rows = self._conn.execute("SELECT chunk_id, counts FROM chunk_terms")
        return BM25Index.from_counts(((cid, json.loads(counts)) for cid, counts in rows),
                                     self.params)

    def _sync(self) -> None:
        """Rebuild the in-memory index if another connection has committed since."""
        version = self._current_data_version()
        if version != self._data_version:
            self._index = self._load_index()
            self._data_version = version

    # -- writing --------------------------------------------------------------------------

    def upsert(self, document: SourceDocument, chunks: list[Chunk],
               vectors: Mapping[str, np.ndarray] | None = None) -> UpsertResult:
        """Store `document` split into `chunks` (offsets into `document.text`), replacing
        whatever it had, in one transaction; nothing happens if its content hash is the
        stored one. `vectors` (chunk id -> embedding, e.g. computed for many documents in
        one batch) are used instead of embedding those chunks again."""
        self._sync()
        if self._stored_hash(document.doc_id) == document.content_hash:
            return UpsertResult(0, 0, unchanged=True)
        planned = self._plan(document, chunks)
        for _ in range(_PLAN_ATTEMPTS):
            self._sync()
            known = set(self._chunk_ids_of(document.doc_id))
            given = {p.chunk_id: vectors[p.chunk_id] for p in planned
                     if vectors is not None and p.chunk_id in vectors}
            missing = [p for p in planned if p.chunk_id not in known and p.chunk_id not in given]
            computed = self._embed([p.chunk.text for p in missing])
            given.update(zip([p.chunk_id for p in missing], computed, strict=True))
            result = self._write(document, planned, given)
            if result is not None:
                return result
        raise StoreError(f"document {document.doc_id!r} kept changing under concurrent writers; "
                         f"gave up after {_PLAN_ATTEMPTS} attempts")

    def delete(self, doc_id: str) -> int:
        """Remove a document and everything of it in one transaction; returns the number of
        chunks removed (0 if the document was not stored)."""
        self._sync()
        self._begin()
        try:
            removed = self._chunk_ids_of(doc_id)
            self._remove_chunks(removed)
            self._conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._after_commit(removed, [])
        return len(removed)

    def _plan(self, document: SourceDocument, chunks: list[Chunk]) -> list[PlannedChunk]:
        return plan_chunks(document, chunks, self.analyzer)

    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed_checked(self.embedder, texts)

    def _write(self, document: SourceDocument, planned: list[PlannedChunk],
               vectors: dict[str, np.ndarray]) -> UpsertResult | None:
        """The upsert transaction; None (rolled back) if the stored chunks changed since
        `vectors` were computed."""
        self._begin()
        try:
            old = self._chunk_ids_of(document.doc_id)
            new_ids = {p.chunk_id for p in planned}
            added = [p for p in planned if p.chunk_id not in old]
            if any(p.chunk_id not in vectors for p in added):
                self._rollback()
                return None
            removed = [cid for cid in old if cid not in new_ids]
            self._remove_chunks(removed)
            self._put_document(document)
            self._insert_chunks(document.doc_id, added, vectors)
            self._update_kept(p for p in planned if p.chunk_id in old)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._after_commit(removed, added)
        return UpsertResult(len(added), len(removed), unchanged=False)

    def _begin(self) -> None:
        """Take the write lock; note whether another connection committed since the index
        was last in step (then the commit is followed by a rebuild, not a patch)."""
        self._conn.execute("BEGIN IMMEDIATE")
        self._write_version = self._current_data_version()  # no one else commits until we do

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        if not self._conn.getautocommit():
            self._conn.execute("ROLLBACK")

    def _after_commit(self, removed: list[str], added: list[PlannedChunk]) -> None:
        """Bring the in-memory BM25 index in step with what was just committed: patched,
        or rebuilt when another connection had committed before our write lock was taken
        (`_begin` recorded the version then: our own commit does not change it, and a
        commit by someone else after ours will show at the next `_sync`)."""
        foreign_write = self._write_version != self._data_version
        self._data_version = self._write_version
        try:
            if foreign_write:
                raise KeyError("another connection wrote")
            for cid in removed:
                if cid in self._index:
                    self._index.remove(cid)
            for p in added:
                self._index.add(p.chunk_id, list(p.terms))
        except (KeyError, ValueError):  # out of step (e.g. another writer): rebuild
            self._index = self._load_index()
        if self.vector_index is not None:  # vector index: apply the same change
            self.vector_index.after_commit(removed, [p.chunk_id for p in added])

    def _stored_hash(self, doc_id: str) -> str | None:
        return self._scalar("SELECT content_hash FROM documents WHERE doc_id = ?", (doc_id,))

    def _chunk_ids_of(self, doc_id: str) -> list[str]:
        rows = self._conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ? ORDER BY ord",
                                  (doc_id,))
        return [row[0] for row in rows]

    def _remove_chunks(self, chunk_ids: list[str]) -> None:
        for cid in chunk_ids:
            rowid = self._scalar("SELECT vec_rowid FROM chunks WHERE chunk_id = ?", (cid,))
            self._conn.execute("DELETE FROM vec_chunks WHERE rowid = ?", (rowid,))
            self._conn.execute("DELETE FROM chunk_terms WHERE chunk_id = ?", (cid,))
            self._conn.execute("DELETE FROM chunks WHERE chunk_id = ?", (cid,))

    def _put_document(self, document: SourceDocument) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self._conn.execute(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET "
            "source = excluded.source, title = excluded.title, content_hash = "
            "excluded.content_hash, metadata = excluded.metadata, ingested_at = "
            "excluded.ingested_at",
            (document.doc_id, document.source, document.title, document.content_hash,
             _to_json(document.metadata, "document metadata"), now))

    def _insert_chunks(self, doc_id: str, added: list[PlannedChunk],
                       vectors: dict[str, np.ndarray]) -> None:
        next_rowid = int(self._scalar("SELECT coalesce(max(vec_rowid), 0) FROM chunks")) + 1
        for p in added:
            c = p.chunk
            self._conn.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (p.chunk_id, doc_id, p.ord, c.text, c.start, c.end,
                 _to_json(c.metadata, "chunk metadata"), next_rowid))
            self._conn.execute("INSERT INTO vec_chunks(rowid, embedding) VALUES (?, ?)",
                               (next_rowid, vectors[p.chunk_id].tobytes()))
            self._conn.execute("INSERT INTO chunk_terms VALUES (?, ?)",
                               (p.chunk_id, _counts_json(p.terms)))
            next_rowid += 1

    def _update_kept(self, kept: Any) -> None:
        self._conn.executemany(
            "UPDATE chunks SET ord = ?, metadata = ? WHERE chunk_id = ?",
            [(p.ord, _to_json(p.chunk.metadata, "chunk metadata"), p.chunk_id) for p in kept])

    # -- reading --------------------------------------------------------------------------

    def count(self) -> int:
        """Number of chunks stored."""
        return int(self._scalar("SELECT count(*) FROM chunks"))

    def documents(self) -> list[StoredDocument]:
        """Every stored document, by doc id."""
        rows = self._conn.execute(
            "SELECT d.doc_id, source, title, content_hash, d.metadata, ingested_at, "
            "(SELECT count(*) FROM chunks c WHERE c.doc_id = d.doc_id) FROM documents d "
            "ORDER BY d.doc_id")
        return [StoredDocument(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6])
                for r in rows]

    def document(self, doc_id: str) -> tuple[str | None, str] | None:
        """(title, source) of a stored document, or None: one row, for citations."""
        row = self._conn.execute("SELECT title, source FROM documents WHERE doc_id = ?",
                                 (doc_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def get_chunk(self, chunk_id: str) -> StoredChunk:
        """The chunk with this id; raises KeyError if there is none."""
        row = self._conn.execute(
            'SELECT chunk_id, doc_id, ord, text, start, "end", metadata FROM chunks '
            "WHERE chunk_id = ?", (chunk_id,)).fetchone()
        if row is None:
            raise KeyError(f"no chunk {chunk_id!r} in {self.path}")
        return StoredChunk(*row[:6], metadata=json.loads(row[6]))

    def chunks_of(self, doc_id: str) -> list[StoredChunk]:
        """The chunks of a document in order (empty if it is not stored)."""
        return [self.get_chunk(cid) for cid in self._chunk_ids_of(doc_id)]

    # -- searching ------------------------------------------------------------------------

    def search_bm25(self, query: str, k: int, filter: dict[str, Any] | None = None
                    ) -> list[Hit]:
        """Top `k` chunks by BM25 (scores as from `BM25Index.search` over every chunk)."""
        check_int("k", k, 1)
        self._sync()
        allowed = None if filter is None else set(self._allowed_ids(filter))
        ranked = self._index.search(self.analyzer.analyze(query), k, allowed=allowed)
        return self._hits(ranked)

    def search_dense(self, query: str, k: int, filter: dict[str, Any] | None = None
                     ) -> list[Hit]:
        """Top `k` chunks by cosine similarity to the query embedding (exact KNN, or
        approximate through `vector_index` when the store has one)."""
        check_int("k", k, 1)
        return self.search_dense_vector(self._embed([query])[0], k, filter)

    def search_dense_vector(self, vector: np.ndarray, k: int,
                            filter: dict[str, Any] | None = None) -> list[Hit]:
        """`search_dense` for a query vector of the embedder's dimension (e.g. one moved
        by `feedback.rocchio`)."""
        check_int("k", k, 1)
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.embedder.dim,) or not np.isfinite(vector).all():
            raise ValueError(f"vector must be {self.embedder.dim} finite numbers, got shape "
                             f"{vector.shape}")
        if self.vector_index is not None:  # vector index: approximate search (HNSW)
            allowed = None if filter is None else self._allowed_ids(filter)
            return self._hits(self.vector_index.search(vector, min(k, MAX_KNN_K), allowed))
        vector = vector.tobytes()
        sql = "SELECT rowid, distance FROM vec_chunks WHERE embedding MATCH ? AND k = ?"
        where_params: list[Any] = []
        if filter is not None:
            where, where_params = _filter_clause(filter)
            sql += (" AND rowid IN (SELECT c.vec_rowid FROM chunks c JOIN documents d "
                    f"ON d.doc_id = c.doc_id WHERE {where})")
        rows = self._knn(sql, vector, k, where_params)
        ids = self._chunk_ids_of_rowids([rowid for rowid, _ in rows])
        ranked = sorted(((ids[rowid], 1.0 - float(d)) for rowid, d in rows),
                        key=lambda pair: (-pair[1], pair[0]))
        return self._hits(ranked[:k])

    def _knn(self, sql: str, vector: bytes, k: int, params: list[Any]) -> list[tuple[int, float]]:
        """The KNN rows, widened past `k` while the k-th distance is tied, so that ties are
        broken by chunk id rather than by scan order."""
        limit = min(k, MAX_KNN_K)
        while True:
            rows = self._conn.execute(sql, [vector, limit, *params]).fetchall()
            tied = len(rows) == limit and len(rows) > k - 1 and rows[-1][1] == rows[k - 1][1]
            if not tied or limit >= MAX_KNN_K:
                return rows
            limit = min(2 * limit, MAX_KNN_K)

    def _chunk_ids_of_rowids(self, rowids: list[int]) -> dict[int, str]:
        rows = self._conn.execute(
            "SELECT vec_rowid, chunk_id FROM chunks WHERE vec_rowid IN "
            "(SELECT value FROM json_each(?))", (json.dumps(rowids),))
        return dict(rows)

    def _allowed_ids(self, filter: dict[str, Any]) -> list[str]:
        where, params = _filter_clause(filter)
        rows = self._conn.execute(
            f"SELECT c.chunk_id FROM chunks c JOIN documents d ON d.doc_id = c.doc_id "
            f"WHERE {where}", params)
        return [row[0] for row in rows]

    def _hits(self, ranked: list[tuple[str, float]]) -> list[Hit]:
        """Hits for (chunk id, score) pairs, read in one query; a chunk deleted by another
        connection since it was ranked is left out."""
        rows = self._conn.execute(
            'SELECT chunk_id, doc_id, text, start, "end", metadata FROM chunks WHERE chunk_id '
            "IN (SELECT value FROM json_each(?))", (json.dumps([cid for cid, _ in ranked]),))
        found = {row[0]: row for row in rows}
        return [Hit(cid, row[1], float(score), row[2], row[3], row[4], json.loads(row[5]))
                for cid, score in ranked if (row := found.get(cid)) is not None]

    # -- feedback and batch ingestion helpers ---------------------------------------------

    def content_hash(self, doc_id: str) -> str | None:
        """The stored content hash of a document (None when it is not stored)."""
        return self._stored_hash(doc_id)

    def chunk_ids(self, doc_id: str) -> set[str]:
        """The ids of a document's stored chunks."""
        return set(self._chunk_ids_of(doc_id))

    def embed(self, texts: list[str]) -> np.ndarray:
        """The embedder's vectors for `texts`, checked: (len(texts), dim) finite float32."""
        return self._embed(list(texts))

    def vectors(self, chunk_ids: Sequence[str]) -> np.ndarray:
        """The stored embeddings of the given chunks, in order (KeyError for an unknown id)."""
        rows = dict(self._conn.execute(
            "SELECT c.chunk_id, v.embedding FROM chunks c JOIN vec_chunks v "
            "ON v.rowid = c.vec_rowid WHERE c.chunk_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(chunk_ids)),)))
        out = np.zeros((len(chunk_ids), self.embedder.dim), dtype=np.float32)
        for i, cid in enumerate(chunk_ids):
            if cid not in rows:
                raise KeyError(f"no chunk {cid!r} in {self.path}")
            out[i] = np.frombuffer(rows[cid], dtype=np.float32)
        return out

    def term_counts(self, chunk_id: str) -> dict[str, int]:
        """term -> count of a stored chunk's analysed text (KeyError for an unknown id)."""
        self._sync()
        return self._index.term_counts(chunk_id)

    def search_bm25_terms(self, weights: Mapping[str, float], k: int,
                          filter: dict[str, Any] | None = None) -> list[Hit]:
        """`search_bm25` for an analysed, weighted query (term -> weight > 0), e.g. one
        expanded by `feedback.rm3_weights`."""
        check_int("k", k, 1)
        self._sync()
        allowed = None if filter is None else set(self._allowed_ids(filter))
        return self._hits(self._index.search_weighted(weights, k, allowed=allowed))

    # -- checking -------------------------------------------------------------------------

    def check(self) -> CheckReport:
        """Verify the invariants: every chunk has exactly one vector and one row of term
        counts, equal to what the analyzer makes of its text; no orphans anywhere; chunk ids
        match their content; the in-memory index equals the table."""
        self._sync()
        problems: list[str] = []
        problems += self._orphans()
        problems += self._chunk_problems()
        stored = self._load_index()
        if self._index.doc_lengths() != stored.doc_lengths() \
                or self._index.postings() != stored.postings():
            problems.append("the in-memory BM25 index differs from the chunk_terms table")
        return CheckReport(int(self._scalar("SELECT count(*) FROM documents")), self.count(),
                           int(self._scalar("SELECT count(*) FROM vec_chunks")), tuple(problems))

    def _orphans(self) -> list[str]:
        checks = {
            "chunks without a document": "SELECT count(*) FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM documents d WHERE d.doc_id = c.doc_id)",
            "chunks without a vector": "SELECT count(*) FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM vec_chunks v WHERE v.rowid = c.vec_rowid)",
            "vectors without a chunk": "SELECT count(*) FROM vec_chunks v WHERE NOT EXISTS "
            "(SELECT 1 FROM chunks c WHERE c.vec_rowid = v.rowid)",
            "chunks without term counts": "SELECT count(*) FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM chunk_terms t WHERE t.chunk_id = c.chunk_id)",
            "term counts without a chunk": "SELECT count(*) FROM chunk_terms t WHERE NOT EXISTS "
            "(SELECT 1 FROM chunks c WHERE c.chunk_id = t.chunk_id)",
        }
        problems = []
        for what, sql in checks.items():
            n = int(self._scalar(sql))
            if n:
                problems.append(f"{n} {what}")
        return problems

    def _chunk_problems(self) -> list[str]:
        counts = {cid: json.loads(c) for cid, c in
                  self._conn.execute("SELECT chunk_id, counts FROM chunk_terms")}
        problems = []
        rows = self._conn.execute('SELECT chunk_id, doc_id, text, start, "end" FROM chunks')
        for cid, doc_id, text, start, end in rows:
            terms = Counter(self.analyzer.analyze(text))
            if cid != chunk_id(doc_id, text, start, end):
                problems.append(f"chunk {cid} has an id that does not match its content")
            if cid in counts and counts[cid] != terms:
                problems.append(f"chunk {cid} has term counts that differ from its analysed "
                                "text")
        return problems


