"""Embedders for the RAG pipeline: an OpenAI-compatible HTTP client, a persistent cache and a
batching helper for ingestion.

    from llmsys.rag.embeddings import (CachedEmbedder, MiniLMEmbedder, OpenAIEmbedder,
                                       embed_in_batches)
    remote = OpenAIEmbedder("http://127.0.0.1:8000/v1", "bge-small-en", batch_size=64)
    with CachedEmbedder(remote, "embeddings.db") as embedder:    # or CachedEmbedder(MiniLM...)
        run = embed_in_batches(embedder, texts, batch_size=256, progress=True)
        run.vectors                      # float32, one L2-normalised row per text, input order
        run.texts_per_second             # throughput of the run (also shown by the bar)
        embedder.stats                   # CacheStats(hits=..., misses=...)

Everything here follows the `Embedder` protocol of `llmsys.agent.memory` (`dim`, an optional
`name`, `embed(texts) -> np.ndarray` of float32 L2-normalised rows), so the classes can be
stacked and handed to `Memory` or a chunker. `Embedder` and `MiniLMEmbedder` are re-exported
from there (imported when first used).

- `OpenAIEmbedder(base_url, model, ...)`: any OpenAI-compatible `POST {base_url}/embeddings`
  endpoint (OpenAI, vLLM, llama.cpp, TEI, Ollama), spoken to with httpx.
  Texts go in batches of `batch_size`; rows are put back in input order by their `index`,
  L2-normalised, and checked (count, length, finite values). `dim` is `dimensions` when
  given (then sent to the server, which must honour it), else learned from the first
  response; reading `dim` before any call makes one small probe request. 429, 408 and 5xx
  answers (except 501 and 505), timeouts and connection errors are retried (`RetryPolicy`:
  exponential backoff; a `Retry-After` header is honoured up to the cap); any other failure raises
  `EmbeddingError` naming the HTTP status and the server's own message. `name` is
  "openai:{model}", or "openai:{model}:{dimensions}" when `dimensions` is set, so caches
  never mix vectors of different lengths.
- `CachedEmbedder(embedder, path)`: a content-hash cache in one SQLite file, keyed by
  (embedder name, sha256 of the text) and holding float32 blobs. A call looks every text up,
  sends only the missing ones to the wrapped embedder (each distinct text once, however often
  it occurs in the call), stores them in one transaction and returns rows in input order.
  Vectors are returned exactly as the wrapped embedder gave them. The table has the layout of
  `Memory`'s `embeddings` table. Thread-safe: the SQLite work is serialised by a lock, the
  wrapped embedder is called outside it (two threads missing the same text may both embed
  it; the results are identical). Other processes may share the file (WAL journaling).
- `embed_in_batches(embedder, texts, batch_size, progress)`: embeds a long list batch by
  batch with a tqdm bar counting texts (its rate is texts/s) and returns an `EmbeddingRun`
  with the vectors, the time taken and the throughput, which is also logged.

Limits: the HTTP client is synchronous (one request at a time per call; use threads for
concurrency). Texts are sent as given: over-long inputs are the server's to truncate or
reject. The cache never evicts; delete the file to reclaim space.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import httpx

    from llmsys.agent.memory import Embedder, MiniLMEmbedder

__all__ = ["CacheStats", "CachedEmbedder", "Embedder", "EmbeddingError", "EmbeddingRun",
           "MiniLMEmbedder", "OpenAIEmbedder", "RetryPolicy", "embed_in_batches"]

logger = logging.getLogger(__name__)

PERMANENT_5XX = frozenset({501, 505})   # not implemented / version: retrying cannot help
BUSY_TIMEOUT_S = 30.0
SQL_BATCH = 500          # hashes per `IN (...)` lookup, well under SQLite's parameter limit
PROBE_TEXT = "dimension probe"
HTTP_EXTRA = "pip install 'llmsys[agent]'"


def __getattr__(name: str) -> Any:
    """`Embedder` and `MiniLMEmbedder` come from llmsys.agent.memory, imported on first use."""
    if name in ("Embedder", "MiniLMEmbedder"):
        from llmsys.agent import memory

        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EmbeddingError(RuntimeError):
    """An embedding request that failed: `status` is the HTTP status (None when no answer
    came back, or when the answer itself was unusable) and `message` the reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- small records

@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: up to `attempts` tries in all, waiting
    `backoff_s * 2**k` seconds (at most `max_backoff_s`) before retry k + 1."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        _check_int("RetryPolicy.attempts", self.attempts, 1)
        _check_seconds("RetryPolicy.backoff_s", self.backoff_s, allow_zero=True)
        _check_seconds("RetryPolicy.max_backoff_s", self.max_backoff_s, allow_zero=True)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based); a server's Retry-After
        wins when given, capped at `max_backoff_s`."""
        wanted = self.backoff_s * 2.0 ** retry if retry_after is None else retry_after
        return max(0.0, min(wanted, self.max_backoff_s))


@dataclass(frozen=True)
class CacheStats:
    """What a `CachedEmbedder` did: `misses` texts were sent to the wrapped embedder, the
    other `hits` input texts (cached ones, and repeats within a call) were not."""

    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        _check_int("CacheStats.hits", self.hits, 0)
        _check_int("CacheStats.misses", self.misses, 0)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any text was asked for."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True, eq=False)
class EmbeddingRun:
    """The result of `embed_in_batches`: `vectors` (one row per text, input order) and the
    wall-clock `seconds` the run took."""

    vectors: np.ndarray
    seconds: float

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, np.ndarray) or self.vectors.ndim != 2:
            raise ValueError(f"EmbeddingRun.vectors must be a 2-D numpy array, "
                             f"got {type(self.vectors).__name__}")
        _check_seconds("EmbeddingRun.seconds", self.seconds, allow_zero=True)

    @property
    def texts_per_second(self) -> float:
        """Throughput: texts embedded per second of the run (0.0 for an empty run)."""
        count = len(self.vectors)
        return count / self.seconds if count and self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- checks

def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_seconds(name: str, value: object, allow_zero: bool = False) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of texts, got a single string; wrap it: [text]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} must be a string, got {type(text).__name__}")
    return texts


def embedder_name(embedder: object) -> str:
    """What an embedder is called in caches and stores: its `name`, else its class name."""
    return str(getattr(embedder, "name", type(embedder).__qualname__))


def _l2_normalised(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- OpenAI client

class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint; see the module docstring. Thread-safe."""

    def __init__(self, base_url: str, model: str, api_key: str = "none", batch_size: int = 64,
                 timeout: float = 30, dimensions: int | None = None,
                 retry: RetryPolicy | None = None) -> None:
        if not isinstance(base_url, str) or not _is_http_url(base_url):
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, such "
                             f"as 'http://127.0.0.1:8000/v1', got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        _check_int("batch_size", batch_size, 1)
        _check_seconds("timeout", timeout)
        if dimensions is not None:
            _check_int("dimensions", dimensions, 1)
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self.batch_size = batch_size
        self.dimensions = dimensions
        self.retry = retry if retry is not None else RetryPolicy()
        self.name = f"openai:{model}" if dimensions is None else f"openai:{model}:{dimensions}"
        self._dim = dimensions
        self._lock = threading.Lock()
        self._client = _http_client(api_key, timeout)

    @property
    def dim(self) -> int:
        """The vector length: `dimensions`, or learned from the first response (reading it
        before any call sends one probe request)."""
        if self._dim is None:
            self.embed([PROBE_TEXT])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, in input order."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._embed_batch(texts[i:i + self.batch_size])
                 for i in range(0, len(texts), self.batch_size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        """Close the HTTP connections (idempotent)."""
        self._client.close()

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIEmbedder({self.url!r}, {self.model!r}, dim={self._dim})"

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        vectors = _parse_embeddings(self._post(body), len(texts))
        self._learn_dim(vectors.shape[1])
        return _l2_normalised(vectors)

    def _learn_dim(self, width: int) -> None:
        with self._lock:
            if self._dim is None:
                self._dim = width
        if width != self._dim:
            what = "dimensions" if self.dimensions is not None else "the first response"
            raise EmbeddingError(f"{self.url} returned vectors of length {width} for model "
                                 f"{self.model!r}; expected {self._dim} (from {what})")

    def _post(self, body: dict[str, Any]) -> Any:
        """POST with retries; the decoded JSON answer, or EmbeddingError."""
        import httpx

        last, last_response = "no attempt made", None
        for attempt in range(self.retry.attempts):
            if attempt:
                time.sleep(self.retry.delay(attempt - 1, _retry_after(last_response)))
            try:
                response = self._client.post(self.url, json=body)
            except httpx.UnsupportedProtocol as e:  # a bad URL: retrying cannot help
                raise EmbeddingError(f"POST {self.url}: {e}") from None
            except httpx.TransportError as e:
                last, last_response = f"{type(e).__name__}: {str(e) or 'no detail'}", None
                continue
            except httpx.HTTPError as e:  # too many redirects, a body that cannot be decoded
                raise EmbeddingError(f"POST {self.url} (model {self.model!r}) failed: "
                                     f"{type(e).__name__}: {e}") from None
            if _transient(response.status_code):
                last = f"HTTP {response.status_code}: {_server_message(response)}"
                last_response = response
                continue
            if response.status_code >= 400:
                raise EmbeddingError(f"POST {self.url} (model {self.model!r}) failed with HTTP "
                                     f"{response.status_code}: {_server_message(response)}",
                                     status=response.status_code)
            return _json_body(response, self.url)
        status = last_response.status_code if last_response is not None else None
        raise EmbeddingError(f"POST {self.url} (model {self.model!r}) failed after "
                             f"{self.retry.attempts} attempts; last error: {last}", status=status)


def _is_http_url(url: str) -> bool:
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _http_client(api_key: str, timeout: float) -> httpx.Client:
    try:
        import httpx
    except ImportError as e:
        raise ImportError(f"OpenAIEmbedder needs httpx: {HTTP_EXTRA}") from e
    if not isinstance(api_key, str):
        raise ValueError(f"api_key must be a string ('none' for servers without keys), "
                         f"got {type(api_key).__name__}")
    headers = {"Authorization": f"Bearer {api_key}"}
    return httpx.Client(timeout=timeout, headers=headers)


def _transient(status: int) -> bool:
    return status in (408, 429) or (500 <= status < 600 and status not in PERMANENT_5XX)


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _server_message(response: httpx.Response) -> str:
    """The server's own error text: OpenAI's error.message, vLLM's message, FastAPI's detail,
    or the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    text = response.text.strip()
    return text[:500] if text else f"empty body ({response.reason_phrase})"


def _json_body(response: httpx.Response, url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise EmbeddingError(f"{url} answered HTTP {response.status_code} with a body that is "
                             f"not JSON: {response.text[:200]!r}") from None


def _parse_embeddings(data: Any, count: int) -> np.ndarray:
    """The rows of an OpenAI embeddings answer, put in input order by their `index`."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != count:
        got = f"{len(items)} items" if isinstance(items, list) else repr(data)[:200]
        raise EmbeddingError(f"embeddings answer must hold 'data' with {count} items, got {got}")
    indexes = [item.get("index", position) if isinstance(item, dict) else position
               for position, item in enumerate(items)]
    whole = all(isinstance(i, int) and not isinstance(i, bool) for i in indexes)
    if not whole or sorted(indexes) != list(range(count)):
        raise EmbeddingError(f"embeddings answer indexes must be 0..{count - 1} once each, "
                             f"got {indexes[:10]}{' ...' if count > 10 else ''}")
    rows: list[Any] = [None] * count
    for index, item in zip(indexes, items):
        rows[index] = _vector(item, index)
    widths = {len(row) for row in rows}
    if len(widths) != 1 or 0 in widths:
        raise EmbeddingError(f"embeddings answer has vectors of lengths {sorted(widths)}; "
                             "expected one non-zero length")
    array = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(array).all():
        raise EmbeddingError("embeddings answer holds NaN or infinite values")
    return array


def _vector(item: Any, index: int) -> np.ndarray:
    embedding = item.get("embedding") if isinstance(item, dict) else None
    if isinstance(embedding, str):            # a server that answered base64 anyway
        return np.frombuffer(base64.b64decode(embedding), dtype=np.float32)
    if not isinstance(embedding, list):
        raise EmbeddingError(f"embeddings answer item {index} has no 'embedding' list: "
                             f"{repr(item)[:200]}")
    try:
        return np.asarray(embedding, dtype=np.float32)
    except (TypeError, ValueError):
        raise EmbeddingError(f"embeddings answer item {index} holds non-numbers: "
                             f"{repr(embedding)[:200]}") from None


# ----------------------------------------------------------------------------- SQLite cache

_CACHE_SCHEMA = """CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL, sha256 TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (model, sha256))"""


class CachedEmbedder:
    """Wraps an embedder with a persistent content-hash cache; see the module docstring."""

    def __init__(self, embedder: Embedder, path: str | os.PathLike[str]) -> None:
        if not callable(getattr(embedder, "embed", None)):
            raise TypeError(f"CachedEmbedder needs an embedder with embed(texts), "
                            f"got {type(embedder).__name__}")
        if not str(path) or str(path) == ":memory:":
            raise ValueError(f"CachedEmbedder needs a file path (the cache outlives the "
                             f"process), got {str(path)!r}")
        self.embedder = embedder
        self.name = embedder_name(embedder)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._conn: sqlite3.Connection | None = _open_cache(self.path)

    @property
    def dim(self) -> int:
        """The wrapped embedder's `dim`."""
        return int(self.embedder.dim)

    @property
    def stats(self) -> CacheStats:
        """Hits and misses since this object was made."""
        with self._lock:
            return CacheStats(self._hits, self._misses)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, in input order; only texts not in the cache reach the wrapped
        embedder, each distinct one once."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        shas = [hashlib.sha256(t.encode("utf-8", errors="surrogatepass")).hexdigest()
                for t in texts]
        found = self._lookup(sorted(set(shas)))
        missing = {sha: text for sha, text in zip(shas, texts) if sha not in found}
        if missing:
            found.update(self._embed_and_store(missing))
        with self._lock:
            self._misses += len(missing)
            self._hits += len(texts) - len(missing)
        return self._assemble(found, shas)

    def close(self) -> None:
        """Close the cache file (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> CachedEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """How many vectors of this embedder the file holds."""
        with self._cache() as conn:
            row = conn.execute("SELECT count(*) FROM embeddings WHERE model = ?",
                               (self.name,)).fetchone()
        return int(row[0])

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.embedder!r}, {str(self.path)!r})"

    @contextmanager
    def _cache(self) -> Iterator[sqlite3.Connection]:
        """The cache connection, under the lock; an SQLite failure (locked past the busy
        timeout, a full disk, a read-only file) becomes an EmbeddingError naming the file."""
        with self._lock:
            if self._conn is None:
                raise ValueError(f"CachedEmbedder({str(self.path)!r}) is closed")
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise EmbeddingError(f"embedding cache {str(self.path)!r}: {e}") from None

    def _lookup(self, shas: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._cache() as conn:
            for start in range(0, len(shas), SQL_BATCH):
                chunk = shas[start:start + SQL_BATCH]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT sha256, vector FROM embeddings WHERE model = ? "
                                    f"AND sha256 IN ({marks})", (self.name, *chunk))
                found.update({sha: np.frombuffer(blob, dtype=np.float32) for sha, blob in rows})
        return found

    def _embed_and_store(self, missing: dict[str, str]) -> dict[str, np.ndarray]:
        vectors = np.asarray(self.embedder.embed(list(missing.values())), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(missing) or not vectors.shape[1]:
            raise EmbeddingError(f"{self.name} returned an array of shape {vectors.shape} for "
                                 f"{len(missing)} texts; expected ({len(missing)}, dim)")
        dim = int(vectors.shape[1])
        rows = [(self.name, sha, dim, vector.tobytes()) for sha, vector in zip(missing, vectors)]
        with self._cache() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return dict(zip(missing, vectors))

    def _assemble(self, found: dict[str, np.ndarray], shas: list[str]) -> np.ndarray:
        widths = {len(vector) for vector in found.values()}
        if len(widths) != 1:
            raise EmbeddingError(f"cache {str(self.path)!r} holds vectors of lengths "
                                 f"{sorted(widths)} for embedder {self.name!r}; give embedders "
                                 "of different sizes different names, or delete the file")
        return np.stack([found[sha] for sha in shas])


def _open_cache(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_CACHE_SCHEMA)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ValueError(f"{str(path)!r} is not a usable embedding cache file: {e}") from e
    return conn


# ----------------------------------------------------------------------------- batching

def embed_in_batches(embedder: Embedder, texts: Sequence[str], batch_size: int = 256,
                     progress: bool = True) -> EmbeddingRun:
    """Embed `texts` `batch_size` at a time, with a tqdm bar (texts/s) when `progress`; the
    vectors come back in input order with the run's time and throughput (also logged)."""
    _check_int("batch_size", batch_size, 1)
    texts = _check_texts(texts)
    started = time.perf_counter()
    parts = []
    with _progress_bar(len(texts), progress, embedder_name(embedder)) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            vectors = np.asarray(embedder.embed(batch), dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise EmbeddingError(f"{embedder_name(embedder)} returned an array of shape "
                                     f"{vectors.shape} for {len(batch)} texts")
            parts.append(vectors)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    if not parts:
        return EmbeddingRun(np.zeros((0, int(embedder.dim)), dtype=np.float32), seconds)
    run = EmbeddingRun(np.concatenate(parts), seconds)
    logger.info("embedded %d texts with %s in %.2f s (%.1f texts/s)", len(texts),
                embedder_name(embedder), seconds, run.texts_per_second)
    return run


def _progress_bar(total: int, enabled: bool, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="text",
                desc=f"embedding ({name})", smoothing=0.1)
