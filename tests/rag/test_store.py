"""Tests of llmsys.rag.store: atomic upserts, both searches against reference rankings,
filters, reopening, and crash safety (an ingestion killed with SIGKILL, then resumed)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apsw")
pytest.importorskip("sqlite_vec")
pytest.importorskip("Stemmer")

from llmsys.rag.bm25 import Analyzer, BM25Index, BM25Params  # noqa: E402
from llmsys.rag.chunking import RecursiveChunker  # noqa: E402
from llmsys.rag.readers import SourceDocument, read_path  # noqa: E402
from llmsys.rag.store import Store, StoreError, chunk_id  # noqa: E402

CHUNKER = RecursiveChunker(max_tokens=30)
TOPICS = ["heat transfer", "boundary layer", "separated flow", "hypersonic speed",
          "turbulent wake", "shock wave", "laminar jet", "vortex street"]
WORDS = ("pressure velocity wall surface model experiment measured gradient plate cylinder "
         "nozzle mixing energy drag lift airfoil").split()
QUERIES = ["heat transfer at the wall", "separated flow behind a cylinder", "shock wave drag",
           "turbulent mixing energy", "laminar jet nozzle velocity", "vortex"]


class WordsEmbedder:
    """Hashed bag of words: deterministic, fast, L2-normalised float32 rows."""

    name = "words"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % self.dim] += (1.0 + (h >> 8) % 97 / 97) * (1 if (h >> 16) % 2 else -1)
            if not out[i].any():
                out[i, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_corpus(folder: Path, n_docs: int, seed: int = 0) -> None:
    """Markdown files with headings and paragraphs drawn from TOPICS and WORDS."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        topic = TOPICS[i % len(TOPICS)]
        parts = [f"# {topic.title()} study {i}\n"]
        for section in range(3):
            parts.append(f"## Part {section}\n")
            for _ in range(2):
                words = rng.choice(WORDS, size=int(rng.integers(8, 25))).tolist()
                parts.append(f"The {topic} " + " ".join(words) + ".\n")
        (folder / f"doc{i:03d}.md").write_text("\n".join(parts), encoding="utf-8")


def ingest(folder: Path, db: Path, report: bool = False) -> list:
    """Upsert every document of `folder`; with `report`, print a line after each."""
    results = []
    with Store(db, WordsEmbedder()) as store:
        for n, doc in enumerate(read_path(folder), 1):
            results.append(store.upsert(doc, CHUNKER.split(doc.text)))
            if report:
                print(f"upserted {n}", flush=True)
    return results


def expected_chunks(folder: Path) -> dict[str, dict[str, str]]:
    """doc_id -> chunk id -> text, as the store should hold them."""
    out = {}
    for doc in read_path(folder):
        out[doc.doc_id] = {chunk_id(doc.doc_id, c.text, c.start, c.end): c.text
                           for c in CHUNKER.split(doc.text)}
    return out


def reference_index(texts: dict[str, str]) -> BM25Index:
    analyzer = Analyzer()
    index = BM25Index(BM25Params())
    for cid, text in texts.items():
        index.add(cid, analyzer.analyze(text))
    return index


def all_texts(folder: Path) -> dict[str, str]:
    return {cid: t for chunks in expected_chunks(folder).values() for cid, t in chunks.items()}


def brute_force(texts: dict[str, str], query: str, k: int) -> list[tuple[str, float]]:
    embedder = WordsEmbedder()
    ids = list(texts)
    scores = embedder.embed([texts[i] for i in ids]) @ embedder.embed([query])[0]
    ranked = sorted(zip(ids, scores.tolist(), strict=True), key=lambda p: (-p[1], p[0]))
    return ranked[:k]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    write_corpus(folder, 12)
    return folder


@pytest.fixture
def store(tmp_path: Path, corpus: Path):
    ingest(corpus, tmp_path / "rag.db")
    with Store(tmp_path / "rag.db", WordsEmbedder()) as s:
        yield s


def test_ingest_stores_every_chunk(store: Store, corpus: Path) -> None:
    expected = expected_chunks(corpus)
    assert [d.doc_id for d in store.documents()] == sorted(expected)
    assert store.count() == sum(len(c) for c in expected.values())
    for doc_id, chunks in expected.items():
        assert [c.chunk_id for c in store.chunks_of(doc_id)] == list(chunks)
    cid, text = next(iter(expected["doc000.md"].items()))
    stored = store.get_chunk(cid)
    assert (stored.doc_id, stored.text, stored.ord) == ("doc000.md", text, 0)
    assert stored.metadata["chunker"] == "recursive"
    with pytest.raises(KeyError, match="no chunk"):
        store.get_chunk("nope")
    assert store.check().ok


def test_reingest_is_idempotent(tmp_path: Path, corpus: Path) -> None:
    db = tmp_path / "rag.db"
    first = ingest(corpus, db)
    assert all(not r.unchanged and r.removed == 0 and r.added > 0 for r in first)
    with Store(db, WordsEmbedder()) as s:
        before = (s.count(), [c.chunk_id for d in s.documents() for c in s.chunks_of(d.doc_id)])
    second = ingest(corpus, db)
    assert all(r.unchanged and r.added == 0 and r.removed == 0 for r in second)
    with Store(db, WordsEmbedder()) as s:
        after = (s.count(), [c.chunk_id for d in s.documents() for c in s.chunks_of(d.doc_id)])
        assert s.check().ok
    assert after == before


def test_changed_document_replaces_its_chunks(store: Store, corpus: Path) -> None:
    old_ids = {c.chunk_id for c in store.chunks_of("doc003.md")}
    path = corpus / "doc003.md"
    path.write_text("# Rewritten\n\nAn entirely new text about supersonic inlets and "
                    "combustion.\n", encoding="utf-8")
    doc = next(read_path(path, root=corpus))
    result = store.upsert(doc, CHUNKER.split(doc.text))
    new_ids = {c.chunk_id for c in store.chunks_of("doc003.md")}
    assert not result.unchanged and result.removed == len(old_ids) and result.added == 1
    assert not old_ids & new_ids and all(_missing(store, cid) for cid in old_ids)
    reference = reference_index(all_texts(corpus))
    for query in [*QUERIES, "supersonic combustion"]:
        expected = reference.search(Analyzer().analyze(query), k=10)
        got = [(h.chunk_id, h.score) for h in store.search_bm25(query, k=10)]
        assert [c for c, _ in got] == [c for c, _ in expected]
        assert np.allclose([s for _, s in got], [s for _, s in expected], rtol=1e-12)
    assert store.search_bm25("supersonic", k=5)[0].doc_id == "doc003.md"
    assert store.check().ok


def test_partly_changed_document_keeps_surviving_chunks(store: Store, corpus: Path) -> None:
    path = corpus / "doc005.md"
    path.write_text(path.read_text(encoding="utf-8") + "\n## Appendix\n\nA note on drag.\n",
                    encoding="utf-8")
    doc = next(read_path(path, root=corpus))
    old_ids = [c.chunk_id for c in store.chunks_of("doc005.md")]
    result = store.upsert(doc, CHUNKER.split(doc.text))
    new_ids = [c.chunk_id for c in store.chunks_of("doc005.md")]
    assert new_ids[: len(old_ids)] == old_ids and (result.added, result.removed) == (1, 0)
    assert new_ids == list(expected_chunks(corpus)["doc005.md"])
    assert store.check().ok


def _missing(store: Store, cid: str) -> bool:
    try:
        store.get_chunk(cid)
    except KeyError:
        return True
    return False


def test_delete(store: Store, corpus: Path) -> None:
    ids = [c.chunk_id for c in store.chunks_of("doc001.md")]
    total = store.count()
    assert store.delete("doc001.md") == len(ids)
    assert store.count() == total - len(ids)
    assert "doc001.md" not in [d.doc_id for d in store.documents()]
    assert all(_missing(store, cid) for cid in ids)
    assert all(h.doc_id != "doc001.md" for q in QUERIES for h in store.search_bm25(q, k=50))
    assert all(h.doc_id != "doc001.md" for q in QUERIES for h in store.search_dense(q, k=50))
    assert store.delete("doc001.md") == 0
    assert store.check().ok
    (corpus / "doc001.md").unlink()
    reference = reference_index(all_texts(corpus))
    expected = reference.search(Analyzer().analyze(QUERIES[0]), k=10)
    got = store.search_bm25(QUERIES[0], k=10)
    assert [(h.chunk_id, pytest.approx(h.score)) for h in got] == expected


def test_bm25_equals_in_memory_index(store: Store, corpus: Path) -> None:
    texts = all_texts(corpus)
    reference = reference_index(texts)
    for query in QUERIES:
        expected = reference.search(Analyzer().analyze(query), k=7)
        hits = store.search_bm25(query, k=7)
        assert [(h.chunk_id, h.score) for h in hits] == expected
        assert all(h.text == texts[h.chunk_id] for h in hits)
    assert store.search_bm25("zzz unknownword", k=3) == []


def test_dense_equals_brute_force_cosine(store: Store, corpus: Path) -> None:
    texts = all_texts(corpus)
    for query in QUERIES:
        expected = brute_force(texts, query, k=8)
        hits = store.search_dense(query, k=8)
        assert [h.chunk_id for h in hits] == [c for c, _ in expected]
        assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    assert len(store.search_dense("heat", k=10_000)) == len(texts)


def test_filters_apply_inside_both_searches(store: Store, corpus: Path) -> None:
    texts = all_texts(corpus)
    per_doc = expected_chunks(corpus)
    wanted = ["doc002.md", "doc007.md"]
    allowed = {cid for d in wanted for cid in per_doc[d]}
    reference = reference_index(texts)
    source = str((corpus / "doc004.md").resolve())
    for query in QUERIES:
        expected = reference.search(Analyzer().analyze(query), k=5, allowed=allowed)
        hits = store.search_bm25(query, k=5, filter={"doc_id": wanted})
        assert [(h.chunk_id, h.score) for h in hits] == expected
        dense = store.search_dense(query, k=5, filter={"doc_id": wanted})
        subset = {cid: texts[cid] for cid in allowed}
        assert [h.chunk_id for h in dense] == [c for c, _ in brute_force(subset, query, 5)]
        assert len(dense) == 5  # the filter is inside KNN, not applied to a global top k
        by_source = store.search_dense(query, k=50, filter={"source": source})
        assert {h.doc_id for h in by_source} == {"doc004.md"}
        assert len(by_source) == len(per_doc["doc004.md"])
    assert len(store.search_dense("flow", k=500, filter={"format": "markdown"})) == len(texts)
    assert len(store.search_dense("flow", k=500, filter={"chunker": "recursive"})) == len(texts)
    assert store.search_dense("flow", k=5, filter={"format": "pdf"}) == []
    assert store.search_bm25("flow", k=5, filter={"doc_id": []}) == []


def test_bad_arguments_are_clear_errors(store: Store) -> None:
    with pytest.raises(ValueError, match="filter key"):
        store.search_bm25("flow", k=3, filter={"a'b": 1})
    with pytest.raises(ValueError, match="filter value for 'source'"):
        store.search_dense("flow", k=3, filter={"source": {"x": 1}})
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        store.search_bm25("flow", k=0)
    doc = SourceDocument("x", "some text", None, "x", {})
    from llmsys.rag.chunking import Chunk
    with pytest.raises(StoreError, match="does not match the document text"):
        store.upsert(doc, [Chunk("other", 0, 5)])
    assert store.check().ok


def test_reopen_gives_identical_results(tmp_path: Path, store: Store) -> None:
    before = [(store.search_bm25(q, k=6), store.search_dense(q, k=6)) for q in QUERIES]
    documents = store.documents()
    store.close()
    with Store(tmp_path / "rag.db", WordsEmbedder()) as again:
        assert [(again.search_bm25(q, k=6), again.search_dense(q, k=6))
                for q in QUERIES] == before
        assert again.documents() == documents
        assert again.check().ok


def test_other_connection_writes_are_seen(tmp_path: Path, store: Store, corpus: Path) -> None:
    with Store(tmp_path / "rag.db", WordsEmbedder()) as other:
        other.delete("doc000.md")
    assert all(h.doc_id != "doc000.md" for h in store.search_bm25("heat transfer", k=50))
    assert store.check().ok


def test_a_write_racing_our_sync_is_not_lost(tmp_path: Path, store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection commits after our last sync but before our write lock: our
    in-memory BM25 index must still end up with both writes (rebuilt, not patched)."""
    from llmsys.rag.chunking import Chunk
    text = "zebra crossing near the hypersonic tunnel"
    with Store(tmp_path / "rag.db", WordsEmbedder()) as other:
        other.upsert(SourceDocument("theirs", text, None, "t", {}), [Chunk(text, 0, len(text))])
    monkeypatch.setattr(store, "_sync", lambda: None)     # the race: no sync before BEGIN
    mine = "zebra herd on the plain"
    store.upsert(SourceDocument("mine", mine, None, "t", {}), [Chunk(mine, 0, len(mine))])
    monkeypatch.undo()
    assert {h.doc_id for h in store.search_bm25("zebra", 10)} == {"theirs", "mine"}
    assert store.check().ok


def test_hits_skip_chunks_deleted_after_ranking(store: Store) -> None:
    ranked = [(h.chunk_id, h.score) for h in store.search_bm25("heat transfer", 3)]
    hits = store._hits([("deleted-by-someone", 9.0), *ranked])
    assert [(h.chunk_id, h.score) for h in hits] == ranked


def test_wrong_embedder_or_analyzer_on_reopen(tmp_path: Path, store: Store) -> None:
    store.close()
    db = tmp_path / "rag.db"
    with pytest.raises(StoreError, match="embedder_dim = 64.*embedder_dim = 32"):
        Store(db, WordsEmbedder(dim=32))
    renamed = WordsEmbedder()
    renamed.name = "other"
    with pytest.raises(StoreError, match="embedder_name = words.*embedder_name = other"):
        Store(db, renamed)
    with pytest.raises(StoreError, match="analyzer"):
        Store(db, WordsEmbedder(), analyzer=Analyzer(stemmer=None))
    import apsw
    conn = apsw.Connection(str(db))
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 1; this llmsys reads version 2"):
        Store(db, WordsEmbedder())


def test_check_reports_broken_invariants(tmp_path: Path, store: Store) -> None:
    report = store.check()
    assert report.ok and report.chunks == report.vectors == store.count()
    assert report.documents == 12
    store._conn.execute("DELETE FROM vec_chunks WHERE rowid = 1")
    store._conn.execute("""UPDATE chunk_terms SET counts = '{"zzz": 1}' WHERE rowid = 2""")
    problems = store.check().problems
    assert "1 chunks without a vector" in problems
    assert any("term counts that differ" in p for p in problems)
    assert "the in-memory BM25 index differs from the chunk_terms table" in problems


CRASH_SCRIPT = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("store_tests", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.ingest(Path(sys.argv[2]), Path(sys.argv[3]), report=True)
"""


def test_killed_ingestion_is_consistent_and_resumes(tmp_path: Path) -> None:
    corpus, db = tmp_path / "corpus", tmp_path / "rag.db"
    write_corpus(corpus, 60, seed=1)
    script = tmp_path / "ingest.py"
    script.write_text(CRASH_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, str(script), __file__, str(corpus), str(db)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == "upserted 8":
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    expected = expected_chunks(corpus)
    with Store(db, WordsEmbedder()) as store:
        assert store.check().ok
        present = {d.doc_id for d in store.documents()}
        assert 8 <= len(present) < 60
        for doc_id in expected:
            ids = [c.chunk_id for c in store.chunks_of(doc_id)]
            assert ids == (list(expected[doc_id]) if doc_id in present else [])
    results = ingest(corpus, db)
    assert sum(r.unchanged for r in results) == len(present)
    with Store(db, WordsEmbedder()) as store:
        assert store.check().ok
        assert store.count() == sum(len(c) for c in expected.values())
        assert json.dumps(sorted(d.doc_id for d in store.documents())) == json.dumps(
            sorted(expected))


def test_a_file_that_is_not_a_store_is_a_store_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello, not a database\n")
    with pytest.raises(StoreError, match="notes.db: not a store file"):
        Store(text, WordsEmbedder())
    import apsw
    other = tmp_path / "other.db"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="SQLite file without a store's tables"):
        Store(other, WordsEmbedder())
    assert {r[0] for r in apsw.Connection(str(other)).execute(
        "SELECT name FROM sqlite_master")} == {"accounts"}          # left untouched
    with pytest.raises(StoreError, match="cannot open the store file"):
        Store(tmp_path / "no-such-dir" / "x.db", WordsEmbedder())


def test_document_row_lookup_equals_documents(store: Store) -> None:
    for d in store.documents():
        assert store.document(d.doc_id) == (d.title, d.source)
    assert store.document("no-such-doc") is None
