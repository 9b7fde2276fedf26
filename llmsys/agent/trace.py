"""Run traces in one SQLite file: every step of every run, and a checkpoint to resume from.

    store = TraceStore("agent.db")
    store.steps(run_id)                  # model calls, tool calls, results, errors, in order
    store.export_jsonl(run_id, sys.stdout)
    llmsys agent trace RUN_ID --db agent.db

Tables: `runs` (task, mode, model, state, final answer, usage, cost, and `checkpoint`: the
conversation and loop counters after the last completed step, which `Agent.resume` continues
from after a crash or an approval pause) and `steps` (one row per event with its latency,
tokens and error). The file is in WAL mode, so a reader (the CLI) never blocks the agent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, session_id TEXT, task TEXT NOT NULL, mode TEXT, model TEXT,
    state TEXT NOT NULL, final_answer TEXT, usage TEXT, cost REAL,
    checkpoint TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, latency_s REAL,
    prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS steps_by_run ON steps(run_id, id);
CREATE INDEX IF NOT EXISTS runs_by_session ON runs(session_id, created_at);
"""


class TraceStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"{self.path} is not a usable trace file: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def start_run(self, run_id: str, task: str, *, session_id: str | None, mode: str,
                  model: str) -> None:
        now = time.time()
        self._write("INSERT INTO runs (run_id, session_id, task, mode, model, state, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                    (run_id, session_id, task, mode, model, now, now))

    def record(self, run_id: str, step: int, kind: str, payload: dict, *,
               latency_s: float | None = None, prompt_tokens: int | None = None,
               completion_tokens: int | None = None, error: str | None = None) -> None:
        self._write("INSERT INTO steps (run_id, step, kind, payload, latency_s, prompt_tokens, "
                    "completion_tokens, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, step, kind, json.dumps(payload, ensure_ascii=False, default=str),
                     latency_s, prompt_tokens, completion_tokens, error, time.time()))

    def checkpoint(self, run_id: str, state: str, checkpoint: dict, usage: dict,
                   cost: float) -> None:
        self._write("UPDATE runs SET state = ?, checkpoint = ?, usage = ?, cost = ?, "
                    "updated_at = ? WHERE run_id = ?",
                    (state, json.dumps(checkpoint, ensure_ascii=False, default=str),
                     json.dumps(usage), cost, time.time(), run_id))

    def finish(self, run_id: str, state: str, final_answer: str | None, usage: dict,
               cost: float) -> None:
        self._write("UPDATE runs SET state = ?, final_answer = ?, usage = ?, cost = ?, "
                    "updated_at = ? WHERE run_id = ?",
                    (state, final_answer, json.dumps(usage), cost, time.time(), run_id))

    def run(self, run_id: str) -> dict:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        out = dict(row)
        for key in ("usage", "checkpoint"):
            out[key] = json.loads(out[key]) if out[key] else None
        return out

    def steps(self, run_id: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY id",
                                    (run_id,)).fetchall()
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]

    def runs(self, session_id: str | None = None, limit: int = 20) -> list[dict]:
        sql = "SELECT run_id, session_id, task, state, final_answer, created_at FROM runs"
        args: tuple[Any, ...] = ()
        if session_id is not None:
            sql, args = sql + " WHERE session_id = ?", (session_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at DESC LIMIT ?",
                                    (*args, limit)).fetchall()
        return [dict(r) for r in rows]

    def export_jsonl(self, run_id: str, out: IO[str]) -> int:
        """The run as JSON lines: one line for the run, then one per step. Returns the count."""
        run = self.run(run_id)
        run.pop("checkpoint", None)
        out.write(json.dumps({"type": "run", **run}, ensure_ascii=False) + "\n")
        steps = self.steps(run_id)
        for step in steps:
            out.write(json.dumps({"type": "step", **step}, ensure_ascii=False) + "\n")
        return len(steps) + 1
