"""An optional FAISS HNSW index over the vectors of a `Store`, kept in step with it.

    from llmsys.rag.faiss_index import FaissHNSWIndex, HNSWConfig
    from llmsys.rag.store import Store

    index = FaissHNSWIndex(HNSWConfig(m=32, ef_construction=100, ef_search=64))
    with Store("rag.db", embedder, vector_index=index) as store:
        store.upsert(document, chunks)                 # the index follows every commit
        store.search_dense("heat transfer", k=10)      # approximate (HNSW), cosine scores
        index.stats                                    # IndexStats(vectors=..., rebuilds=...)
    # closing the store saved the index to "rag.db.faiss"; the next open reuses it

`Store.search_dense` is exact KNN through sqlite-vec, which scans every vector. For large
corpora (100k+ chunks) this index answers the same query approximately with an HNSW graph
(`faiss.IndexHNSWFlat`, inner product on L2-normalised copies of the store's vectors, so
scores are cosine similarities exactly as the store computes them).

How it stays in step with the SQLite file:

- Every vector is identified by its chunk: the pair (chunk id, `vec_rowid`). FAISS positions
  are 0, 1, 2, ... in insertion order; the index keeps position -> (chunk id, rowid).
- After each commit of its store (`after_commit`), the removed chunks are tombstoned and the
  added ones read back from `vec_chunks` and added. HNSW graphs cannot delete: tombstoned
  positions are excluded at search time by an `IDSelectorBitmap` in the search parameters,
  and once they exceed `max_tombstone_fraction` of the positions the graph is rebuilt from
  the live vectors it holds (a "compaction").
- When `PRAGMA data_version` shows that another connection or process committed (checked
  after each commit and before each search), the index catches up: it diffs its pairs
  against the `chunks` table, tombstones what went and adds what came (or rebuilds from
  `vec_chunks` when that would leave too many tombstones). The diff runs in one read
  transaction, and the version is read before it, so a write racing with it only causes
  one more (empty) catch-up later, never a missed one.
- The side file `<db>.faiss` (written on `close`, on `save`, and every `save_every`
  changes when set) holds the serialised graph, the position -> (chunk id, rowid) table and
  the tombstones, with a CRC-32 of the graph. Saving writes a temporary file in the same
  folder, fsyncs it and renames it over the old one, so a kill mid-save leaves the old file
  or the new one. On open a side file that is missing, unreadable, corrupt, made for another
  dimension or HNSW shape, is rebuilt from `vec_chunks`; a readable one is diffed against
  the store exactly as above, so a stale file (the store written without the index, or by
  a process killed before saving) is caught up and never gives results the store does not
  hold. An in-memory store (":memory:") has no side file.

Searching (`search(query, k, allowed)`, called by `Store.search_dense`): the candidates are
the chunks a filter allows, else every live vector. The graph is searched with an
`IDSelectorBitmap` of the allowed positions and `efSearch = max(ef_search, k)` divided by the
share of the graph's nodes that are candidates (a filter allowing 10% of the chunks searches
ten times as wide, which keeps filtered recall near unfiltered recall). That makes a very
selective filter expensive in the graph, while scoring its few candidates exactly with numpy
(on the index's own normalised copies of the vectors, no SQL round trip) is cheap and exact.
So the exact scan is used when it costs less: with `exact_max=None` (the default) when
n * n < 8 * max(ef_search, k) * positions for n candidates (a rough cost model: one graph
step taken as the price of scoring 8 vectors, from a one-off timing on 100k x 384 vectors,
not a benchmark kept in the repository; `benchmarks/rag_faiss.py` times the 1% and 10%
filters on either side of it), e.g. up to about 7,000 candidates of 100,000; an int
`exact_max` fixes the threshold instead (0: always the graph). If the graph yields fewer
than k candidates, the exact scan answers.
Results are (chunk id, cosine) pairs, best first, ties by chunk id (the graph search is
widened while the k-th score is tied).

Limits: approximate (recall depends on `m`, `ef_construction`, `ef_search`); the index keeps
every vector in memory (4 * dim bytes each, plus about 8 * m bytes of graph and ~150 bytes
of Python bookkeeping per chunk); a catch-up reads the whole `chunks` table (chunk id, rowid);
a compaction or rebuild re-inserts every vector (minutes for millions). One index per store,
not thread-safe (like the store). Two processes saving the same side file: the last rename
wins, and the other process's changes are caught up on the next open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import apsw

__all__ = ["FaissHNSWIndex", "HNSWConfig", "IndexStats", "side_path"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SIDE_SUFFIX = ".faiss"
_GRAPH_STEP_COST = 8  # one HNSW search step taken as the cost of scoring 8 vectors exactly


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("FaissHNSWIndex needs faiss: pip install 'llmsys[vectors]'") from e
    return faiss


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class HNSWConfig:
    """HNSW shape and the index's maintenance policy.

    `m`: graph neighbours per node (2 * m on the bottom layer); `ef_construction` and
    `ef_search`: candidate list sizes when inserting and searching (search uses at least k);
    `max_tombstone_fraction`: compact once this share of positions is deleted;
    `exact_max`: candidate sets up to this size are scored exactly instead of via the graph
    (None: whenever that is estimated to be cheaper, see the module docstring);
    `save_every`: also save after this many added + removed vectors (None: on close only).
    """

    m: int = 32
    ef_construction: int = 100
    ef_search: int = 64
    max_tombstone_fraction: float = 0.2
    exact_max: int | None = None
    save_every: int | None = None

    def __post_init__(self) -> None:
        for name, low, high in (("m", 2, 512), ("ef_construction", 1, 65536),
                                ("ef_search", 1, 65536)):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= high:
                raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        fraction = self.max_tombstone_fraction
        if (not isinstance(fraction, int | float) or isinstance(fraction, bool)
                or not 0.0 < fraction < 1.0):
            raise ValueError(f"max_tombstone_fraction must be a number in (0, 1), "
                             f"got {fraction!r}")
        if self.exact_max is not None and (not _is_int(self.exact_max) or self.exact_max < 0):
            raise ValueError(f"exact_max must be None or an int >= 0, got {self.exact_max!r}")
        if self.save_every is not None and (not _is_int(self.save_every)
                                            or self.save_every < 1):
            raise ValueError(f"save_every must be None or an int >= 1, got {self.save_every!r}")


@dataclass(frozen=True)
class IndexStats:
    """What the index holds and has done since it was last opened (the counters stay
    readable after `close`).

    `loaded`: the side file was used on open (not rebuilt); `rebuilds`: builds from
    `vec_chunks` (with `rebuild_reason` of the latest); `catch_ups`: diffs against the store
    that found changes; `compactions`: rebuilds from its own live vectors."""

    vectors: int
    tombstones: int
    loaded: bool
    rebuilds: int
    rebuild_reason: str | None
    catch_ups: int
    compactions: int
    saves: int


def side_path(db_path: str | Path) -> Path | None:
    """Where the index of the store at `db_path` is saved (None for an in-memory store)."""
    text = str(db_path)
    if text in ("", ":memory:"):
        return None
    return Path(text + SIDE_SUFFIX)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32, C-contiguous."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


@contextlib.contextmanager
def _read_transaction(conn: apsw.Connection) -> Iterator[None]:
    """One consistent snapshot for several SELECTs (a no-op inside an open transaction)."""
    if not conn.getautocommit():
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


class _BadSideFile(Exception):
    """The side file cannot be used; the message says why."""


class FaissHNSWIndex:
    """A FAISS HNSW index of a store's vectors (see the module docstring).

    Hand it to `Store(path, embedder, vector_index=...)`; the store calls `open`,
    `after_commit`, `search` and `close`. One index serves one store at a time."""

    def __init__(self, config: HNSWConfig | None = None) -> None:
        if config is not None and not isinstance(config, HNSWConfig):
            raise TypeError(f"config must be an HNSWConfig or None, got {type(config).__name__}")
        self.config = config if config is not None else HNSWConfig()
        self._conn: apsw.Connection | None = None
        self._reset_counts()
        self._clear()

    def _reset_counts(self) -> None:
        self._loaded = False
        self._counts = {"rebuilds": 0, "catch_ups": 0, "compactions": 0, "saves": 0}
        self._rebuild_reason: str | None = None

    def _clear(self) -> None:
        """Drop the graph and its tables (the counters stay readable after `close`)."""
        self._index: Any = None
        self._dim = 0
        self._side: Path | None = None
        self._chunk_ids: list[str] = []        # by position; "" once tombstoned
        self._rowids: list[int] = []           # by position
        self._pos: dict[str, int] = {}         # live chunk id -> position
        self._selector_cache: Any = None
        self._version = 0
        self._changes = 0                      # added + removed since the last save
        self._dirty = False

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, conn: apsw.Connection, db_path: str | Path, dim: int) -> None:
        """Attach to a store's connection: load the side file and catch up, or rebuild."""
        if self._conn is not None:
            raise ValueError("this FaissHNSWIndex is already open for another store; "
                             "give each Store its own index")
        if not _is_int(dim) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        _faiss()
        self._reset_counts()
        self._clear()
        self._conn, self._dim, self._side = conn, dim, side_path(db_path)
        try:
            self._load_or_rebuild()
        except BaseException:
            self._conn = None
            self._clear()
            raise

    def close(self) -> None:
        """Save (if anything changed since the last save) and detach; safe to call twice."""
        if self._conn is None:
            return
        try:
            if self._dirty:
                self.save()
        finally:
            self._conn = None
            self._clear()

    def save(self) -> None:
        """Write the side file atomically (temporary file, fsync, rename)."""
        self._require_open()
        if self._side is None:
            return
        header: dict[str, Any] = self._shape()
        blob = _faiss().serialize_index(self._index)
        header["crc32"] = zlib.crc32(blob)
        fd, tmp = tempfile.mkstemp(prefix=self._side.name + ".", suffix=".tmp",
                                   dir=self._side.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                         index=blob, rowids=np.asarray(self._rowids, dtype=np.int64),
                         chunk_ids=np.array([c.encode() for c in self._chunk_ids],
                                            dtype=np.bytes_))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._side)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._changes, self._dirty = 0, False
        self._counts["saves"] += 1

    @property
    def stats(self) -> IndexStats:
        """Counts of vectors, tombstones and maintenance work (see `IndexStats`)."""
        return IndexStats(len(self._pos), len(self._chunk_ids) - len(self._pos), self._loaded,
                          self._counts["rebuilds"], self._rebuild_reason,
                          self._counts["catch_ups"], self._counts["compactions"],
                          self._counts["saves"])

    def _require_open(self) -> apsw.Connection:
        if self._conn is None:
            raise ValueError("this FaissHNSWIndex is not open: pass it to "
                             "Store(path, embedder, vector_index=...)")
        return self._conn

    # -- loading and building ---------------------------------------------------------------

    def _load_or_rebuild(self) -> None:
        if self._side is None:
            self._rebuild("in-memory store")
            return
        try:
            self._load(self._side)
        except _BadSideFile as e:
            log.info("rebuilding the FAISS index of %s: %s", self._side, e)
            self._rebuild(str(e))
            return
        self._loaded = True
        self._catch_up(on_open=True)

    def _load(self, path: Path) -> None:
        """Read the side file into this index, or raise `_BadSideFile`."""
        if not path.exists():
            raise _BadSideFile(f"no side file {path.name}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                blob = np.ascontiguousarray(data["index"], dtype=np.uint8)
                rowids = [int(r) for r in data["rowids"].tolist()]
                chunk_ids = [c.decode() for c in data["chunk_ids"].tolist()]
        except Exception as e:  # any unreadable file is rebuilt, whatever failed
            raise _BadSideFile(f"unreadable side file ({type(e).__name__}: {e})") from e
        if not isinstance(header, dict):
            raise _BadSideFile("side file header is not a JSON object")
        for key, value in self._shape().items():
            if header.get(key) != value:
                raise _BadSideFile(f"side file has {key} = {header.get(key)!r}, "
                                   f"expected {value!r}")
        if header.get("crc32") != zlib.crc32(blob):
            raise _BadSideFile("side file checksum mismatch (corrupt)")
        if len(chunk_ids) != len(rowids):
            raise _BadSideFile("side file tables have different lengths")
        index = self._deserialize(blob, len(rowids))
        self._install(index, chunk_ids, rowids)

    def _shape(self) -> dict[str, Any]:
        """What a side file must have been saved with to be usable by this index."""
        return {"format": FORMAT_VERSION, "dim": self._dim, "m": self.config.m,
                "ef_construction": self.config.ef_construction, "metric": "inner_product"}

    def _deserialize(self, blob: np.ndarray, n: int) -> Any:
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(blob)
        except RuntimeError as e:
            raise _BadSideFile(f"FAISS cannot read the side file ({e})") from e
        if (not isinstance(index, faiss.IndexHNSWFlat) or index.d != self._dim
                or index.metric_type != faiss.METRIC_INNER_PRODUCT or index.ntotal != n):
            raise _BadSideFile("side file holds a different FAISS index")
        return index

    def _install(self, index: Any, chunk_ids: list[str], rowids: list[int]) -> None:
        self._index, self._chunk_ids, self._rowids = index, chunk_ids, rowids
        self._pos = {cid: i for i, cid in enumerate(chunk_ids) if cid}
        self._selector_cache = None

    def _new_index(self) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self._dim, self.config.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        index.hnsw.efSearch = self.config.ef_search
        return index

    def _build(self, chunk_ids: list[str], rowids: list[int], vectors: np.ndarray) -> None:
        index = self._new_index()
        if len(chunk_ids):
            index.add(_normalised(vectors))
        self._install(index, list(chunk_ids), list(rowids))
        self._dirty = True

    def _rebuild(self, reason: str) -> None:
        """Build from the store's tables (one read snapshot)."""
        conn = self._require_open()
        self._version = self._data_version()
        with _read_transaction(conn):
            table = self._table()
            vectors = self._fetch_vectors(list(table.values()))
        found = [i for i, v in enumerate(vectors) if v is not None]
        pairs = list(table.items())
        self._build([pairs[i][0] for i in found], [pairs[i][1] for i in found],
                    np.array([vectors[i] for i in found], dtype=np.float32).reshape(-1, self._dim))
        self._counts["rebuilds"] += 1
        self._rebuild_reason = reason

    def _compact(self) -> None:
        """Rebuild the graph from the live vectors it holds (drops the tombstones)."""
        positions = np.array(sorted(self._pos.values()), dtype=np.int64)
        vectors = self._stored_vectors()[positions].copy()
        self._build([self._chunk_ids[p] for p in positions],
                    [self._rowids[p] for p in positions], vectors)
        self._counts["compactions"] += 1

    def _maybe_compact(self) -> None:
        dead = len(self._chunk_ids) - len(self._pos)
        if dead and dead > self.config.max_tombstone_fraction * len(self._chunk_ids):
            self._compact()

    # -- reading the store ------------------------------------------------------------------

    def _data_version(self) -> int:
        return int(self._require_open().execute("PRAGMA data_version").fetchone()[0])

    def _table(self) -> dict[str, int]:
        """chunk id -> vec_rowid of every stored chunk."""
        return dict(self._require_open().execute("SELECT chunk_id, vec_rowid FROM chunks"))

    def _fetch_vectors(self, rowids: list[int]) -> list[np.ndarray | None]:
        """The stored embeddings of these rowids, in order (None where a vector is missing)."""
        conn = self._require_open()
        found = {}  # point lookups (a few microseconds each); only a rebuild scans the table
        for rowid in rowids:
            row = conn.execute("SELECT embedding FROM vec_chunks WHERE rowid = ?",
                               (rowid,)).fetchone()
            if row is not None:
                found[rowid] = row[0]
        out: list[np.ndarray | None] = []
        for rowid in rowids:
            blob = found.get(rowid)
            vector = None if blob is None else np.frombuffer(blob, dtype=np.float32)
            out.append(vector if vector is not None and vector.shape == (self._dim,) else None)
        return out

    def _stored_vectors(self) -> np.ndarray:
        """A view of the graph's own (normalised) vectors, one row per position."""
        faiss = _faiss()
        n = self._index.ntotal
        if n == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        flat = faiss.downcast_index(self._index.storage)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self._dim).reshape(n, self._dim)

    # -- keeping in step --------------------------------------------------------------------

    def after_commit(self, removed: Collection[str], added: Collection[str]) -> None:
        """Apply what the store just committed: chunk ids removed and added."""
        conn = self._require_open()
        if self._data_version() != self._version:  # another connection wrote meanwhile
            self._catch_up()
            return
        if any(cid not in self._pos for cid in removed):
            self._catch_up()
            return
        self._tombstone(list(removed))
        with _read_transaction(conn):
            rows = dict(conn.execute(
                "SELECT chunk_id, vec_rowid FROM chunks WHERE chunk_id IN "
                "(SELECT value FROM json_each(?))", (json.dumps(list(added)),)))
            in_step = len(rows) == len(added) and not any(c in self._pos for c in rows)
            if in_step:
                in_step = self._add(list(rows.items())) == len(rows)  # every vector found
        if not in_step:
            self._catch_up()
            return
        self._finish_change(len(removed) + len(added))

    def refresh(self) -> None:
        """Catch up if another connection has committed since the index last looked."""
        self._require_open()
        if self._data_version() != self._version:
            self._catch_up()

    def _catch_up(self, on_open: bool = False) -> None:
        """Diff (chunk id, rowid) pairs against the store and apply the difference."""
        conn = self._require_open()
        self._version = self._data_version()
        with _read_transaction(conn):
            table = self._table()
            gone = [c for c, p in self._pos.items() if table.get(c) != self._rowids[p]]
            new = [(c, r) for c, r in table.items()
                   if c not in self._pos or self._rowids[self._pos[c]] != r]
            if not gone and not new:
                return
            dead = len(self._chunk_ids) - len(self._pos) + len(gone)
            if dead > self.config.max_tombstone_fraction * (len(self._chunk_ids) + len(new)):
                self._loaded = self._loaded and not on_open
                self._rebuild("side file out of date" if on_open else "too many changes")
                return
            self._tombstone(gone)
            self._add(new)
        self._counts["catch_ups"] += 1
        self._finish_change(len(gone) + len(new))

    def _tombstone(self, chunk_ids: list[str]) -> None:
        for cid in chunk_ids:
            self._chunk_ids[self._pos.pop(cid)] = ""
        if chunk_ids:
            self._selector_cache = None

    def _add(self, pairs: list[tuple[str, int]]) -> int:
        """Add (chunk id, rowid) pairs, reading their vectors (skipping missing ones);
        returns how many were added."""
        vectors = self._fetch_vectors([r for _, r in pairs])
        keep = [i for i, v in enumerate(vectors) if v is not None]
        if not keep:
            return 0
        start = self._index.ntotal
        self._index.add(_normalised(np.stack([vectors[i] for i in keep])))
        for offset, i in enumerate(keep):
            cid, rowid = pairs[i]
            self._chunk_ids.append(cid)
            self._rowids.append(rowid)
            self._pos[cid] = start + offset
        self._selector_cache = None
        return len(keep)

    def _finish_change(self, n: int) -> None:
        self._changes += n
        self._dirty = self._dirty or n > 0
        self._maybe_compact()
        if self.config.save_every is not None and self._changes >= self.config.save_every:
            self.save()

    # -- searching --------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, allowed: Collection[str] | None = None
               ) -> list[tuple[str, float]]:
        """The top `k` (chunk id, cosine) pairs for a query embedding, best first, ties by
        chunk id; with `allowed`, only among those chunk ids."""
        self._require_open()
        if not _is_int(k) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        q = np.asarray(query, dtype=np.float32)
        if q.shape != (self._dim,) or not np.isfinite(q).all():
            raise ValueError(f"query must be a finite vector of shape ({self._dim},), "
                             f"got shape {q.shape}")
        self.refresh()
        q = _normalised(q[None])
        if allowed is None:
            positions = None
            n = len(self._pos)
        else:
            positions = np.unique(np.fromiter((self._pos[c] for c in allowed if c in self._pos),
                                              dtype=np.int64))
            n = len(positions)
        if n == 0:
            return []
        if not self._exact_is_cheaper(n, k):
            ranked = self._graph_search(q, min(k, n), positions)
            if len(ranked) >= min(k, n):
                return ranked
        if positions is None:
            positions = np.array(sorted(self._pos.values()), dtype=np.int64)
        return self._exact_search(q[0], k, positions)

    def _exact_is_cheaper(self, n: int, k: int) -> bool:
        """Whether scoring `n` candidates exactly beats the (widened) graph search."""
        if self.config.exact_max is not None:
            return n <= self.config.exact_max
        ef = max(self.config.ef_search, k)
        return n * n < _GRAPH_STEP_COST * ef * len(self._chunk_ids)

    def _graph_search(self, q: np.ndarray, k: int, positions: np.ndarray | None
                      ) -> list[tuple[str, float]]:
        """HNSW search among `positions` (None: every live one); widened past `k` while the
        k-th score is tied, so that ties are broken by chunk id rather than graph order."""
        params = _faiss().SearchParametersHNSW()
        if positions is not None:
            params.sel = self._selector(positions)
        elif len(self._pos) < len(self._chunk_ids):  # tombstones: search the live ones only
            if self._selector_cache is None:
                self._selector_cache = self._selector(np.fromiter(self._pos.values(),
                                                                  dtype=np.int64))
            params.sel = self._selector_cache
        n = len(self._pos) if positions is None else len(positions)
        share = n / len(self._chunk_ids)  # of the graph's nodes that may be returned
        limit = min(k + 1, n)  # one more than asked, to see whether the k-th is tied
        while True:
            wanted = max(self.config.ef_search, limit) / share
            params.efSearch = int(min(np.ceil(wanted), len(self._chunk_ids)))
            scores, labels = self._index.search(q, limit, params=params)
            found = labels[0] >= 0
            tied = (limit > k and found.sum() == limit
                    and scores[0, limit - 1] == scores[0, k - 1])
            if not tied or limit >= n:
                break
            limit = min(2 * limit, n)
        ranked = [(self._chunk_ids[int(p)], float(s))
                  for s, p in zip(scores[0][found], labels[0][found])]
        return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))[:k]

    def _selector(self, positions: np.ndarray) -> Any:
        """An IDSelectorBitmap of these positions (it keeps a reference to its bitmap)."""
        mask = np.zeros(self._index.ntotal, dtype=bool)
        mask[positions] = True
        return _faiss().IDSelectorBitmap(np.packbits(mask, bitorder="little"))

    def _exact_search(self, q: np.ndarray, k: int, positions: np.ndarray
                      ) -> list[tuple[str, float]]:
        scores = self._stored_vectors()[positions] @ q
        if len(scores) > k:
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = np.flatnonzero(scores >= kth)
        else:
            keep = np.arange(len(scores))
        ranked = [(self._chunk_ids[int(positions[i])], float(scores[i])) for i in keep]
        return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))[:k]

    # -- checking ---------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Problems found comparing the index with the store (empty when in step): the live
        (chunk id, rowid) pairs equal the `chunks` table's and every vector equals the
        normalised stored one."""
        conn = self._require_open()
        self.refresh()
        problems: list[str] = []
        with _read_transaction(conn):
            table = self._table()
            mine = {c: self._rowids[p] for c, p in self._pos.items()}
            if mine != table:
                missing, extra = len(table.keys() - mine.keys()), len(mine.keys() - table.keys())
                problems.append(f"index and store differ: {missing} chunks missing from the "
                                f"index, {extra} not in the store, or rowids differ")
            stored = self._fetch_vectors(list(table.values()))
        held = self._stored_vectors()
        for (cid, _), vector in zip(table.items(), stored, strict=True):
            if cid in self._pos and vector is not None and not np.allclose(
                    held[self._pos[cid]], _normalised(vector[None])[0], atol=1e-6):
                problems.append(f"vector of chunk {cid} differs from the store's")
        return problems
