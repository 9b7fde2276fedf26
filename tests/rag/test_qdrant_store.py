"""Tests of llmsys.rag.qdrant_store through qdrant-client's local mode, against our SQLite
`Store` holding the same documents with the same embedder: dense search, filters, BM25 (exact
after `reweight_bm25`, close before), upserts, deletes, reopening, an interrupted upsert and
the hybrid `Retriever`."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("apsw")
pytest.importorskip("sqlite_vec")
pytest.importorskip("Stemmer")

from qdrant_client import QdrantClient, models  # noqa: E402

from llmsys.rag.bm25 import Analyzer, BM25Params  # noqa: E402
from llmsys.rag.chunking import Chunk, RecursiveChunker  # noqa: E402
from llmsys.rag.qdrant_store import QdrantStore, term_index  # noqa: E402
from llmsys.rag.readers import SourceDocument  # noqa: E402
from llmsys.rag.retrieval import Retriever  # noqa: E402
from llmsys.rag.store import Store, StoreError, chunk_id  # noqa: E402

CHUNKER = RecursiveChunker(max_tokens=30)
TOPICS = ["heat transfer", "boundary layer", "separated flow", "hypersonic speed",
          "turbulent wake", "shock wave", "laminar jet", "vortex street"]
WORDS = ("pressure velocity wall surface model experiment measured gradient plate cylinder "
         "nozzle mixing energy drag lift airfoil").split()
QUERIES = ["heat transfer at the wall", "separated flow behind a cylinder", "shock wave drag",
           "turbulent mixing energy", "laminar jet nozzle velocity", "vortex", "plate plate lift"]
LANGS = ["en", "de", "fr"]


class WordsEmbedder:
    """Hashed bag of words: deterministic, fast, L2-normalised float32 rows."""

    name = "words"

    def __init__(self, dim: int = 48) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % self.dim] += (1.0 + (h >> 8) % 89 / 89) * (1 if (h >> 16) % 2 else -1)
            if not out[i].any():
                out[i, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_docs(n: int, seed: int = 0) -> list[tuple[SourceDocument, list[Chunk]]]:
    """Markdown documents with varied metadata; some chunks override `lang` (one with None,
    which falls back to the document's value, as in `Store`)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        parts = [f"# {topic.title()} study {i}\n"]
        for section in range(2):
            parts.append(f"## Part {section}\n")
            for _ in range(2):
                words = rng.choice(WORDS, size=int(rng.integers(3, 30))).tolist()
                parts.append(f"The {topic} " + " ".join(words) + ".\n")
        if i % 5 == 0:
            parts.append("## Summary\n\nShock wave drag.\n")  # identical chunks: dense ties
        text = "\n".join(parts)
        meta = {"lang": LANGS[i % 3], "year": 2020 + i % 4, "weight": [0.5, 1.0][i % 2],
                "flag": i % 2 == 0, "tags": ["a", "b"] if i % 4 == 0 else None}
        doc = SourceDocument(f"d{i:02d}", text, None if i % 3 == 0 else f"Study {i}",
                             f"src{i % 4}.md", meta)
        chunks = CHUNKER.split(text)
        chunks = [replace(c, metadata={**c.metadata, "lang": "la"}) if j % 3 == 1 else c
                  for j, c in enumerate(chunks)]
        chunks[0] = replace(chunks[0], metadata={**chunks[0].metadata, "lang": None})
        out.append((doc, chunks))
    return out


DOCS = make_docs(14)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "ref.db", WordsEmbedder()) as s:
        for doc, chunks in DOCS:
            s.upsert(doc, chunks)
        yield s


@pytest.fixture
def qstore():
    with QdrantStore(":memory:", "docs", WordsEmbedder()) as q:
        for doc, chunks in DOCS:
            q.upsert(doc, chunks)
        yield q


def ids(hits: list) -> list[str]:
    return [h.chunk_id for h in hits]


def assert_same_hits(got: list, want: list, rel: float = 1e-5) -> None:
    assert ids(got) == ids(want)
    assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=rel, abs=1e-5)
    assert [(h.doc_id, h.text, h.start, h.end, h.metadata) for h in got] == \
        [(h.doc_id, h.text, h.start, h.end, h.metadata) for h in want]


# ----------------------------------------------------------------------------- contents

def test_ingest_holds_what_the_store_holds(store: Store, qstore: QdrantStore) -> None:
    assert qstore.count() == store.count() > 40
    ours = [replace(d, ingested_at="") for d in qstore.documents()]
    assert ours == [replace(d, ingested_at="") for d in store.documents()]
    for doc, _ in DOCS:
        assert qstore.chunks_of(doc.doc_id) == store.chunks_of(doc.doc_id)
    first = store.chunks_of("d03")[1]
    assert qstore.get_chunk(first.chunk_id) == first
    with pytest.raises(KeyError, match="no chunk 'nope'"):
        qstore.get_chunk("nope")
    assert qstore.chunks_of("missing") == []


def test_upsert_is_idempotent(qstore: QdrantStore) -> None:
    before = {doc.doc_id: ids(qstore.chunks_of(doc.doc_id)) for doc, _ in DOCS}
    results = [qstore.upsert(doc, chunks) for doc, chunks in DOCS]
    assert all(r.unchanged and r.added == r.removed == 0 for r in results)
    assert {doc.doc_id: ids(qstore.chunks_of(doc.doc_id)) for doc, _ in DOCS} == before
    assert qstore.count() == sum(len(c) for c in before.values())


def edited(doc: SourceDocument) -> tuple[SourceDocument, list[Chunk]]:
    """The document with its last paragraph replaced, a new one added and new metadata."""
    text = doc.text.rsplit("The ", 1)[0] + "The vortex street sheds eddies.\n\nA new ending.\n"
    new = replace(doc, text=text, metadata={**doc.metadata, "lang": "it"}, source="moved.md")
    return new, CHUNKER.split(text)


def test_changed_document_replaces_its_chunks(store: Store, qstore: QdrantStore) -> None:
    doc = DOCS[4][0]
    old_ids = set(ids(qstore.chunks_of(doc.doc_id)))
    new, chunks = edited(doc)
    assert qstore.upsert(new, chunks) == store.upsert(new, chunks)
    now = qstore.chunks_of(doc.doc_id)
    assert now == store.chunks_of(doc.doc_id)
    assert ids(now) == [chunk_id(doc.doc_id, c.text, c.start, c.end) for c in chunks]
    assert old_ids & set(ids(now))                       # some chunks were kept ...
    for gone in old_ids - set(ids(now)):                 # ... the others are gone
        with pytest.raises(KeyError):
            qstore.get_chunk(gone)
    assert qstore.count() == store.count()
    for flt in ({"lang": "it"}, {"source": "moved.md"}, {"source": DOCS[4][0].source}):
        assert ids(qstore.search_dense("vortex", 500, flt)) == \
            ids(store.search_dense("vortex", 500, flt))
    assert [d.content_hash for d in qstore.documents()] == \
        [d.content_hash for d in store.documents()]


def test_delete_removes_a_document(store: Store, qstore: QdrantStore) -> None:
    assert qstore.delete("d05") == store.delete("d05") > 0
    assert qstore.delete("d05") == 0 and qstore.delete("never") == 0
    assert qstore.count() == store.count()
    assert "d05" not in {d.doc_id for d in qstore.documents()}
    assert qstore.chunks_of("d05") == []
    assert all(h.doc_id != "d05" for h in qstore.search_dense("shock wave drag", 500))
    assert_same_hits(qstore.search_dense("shock wave drag", 20),
                     store.search_dense("shock wave drag", 20))


def test_interrupted_upsert_never_hides_the_document(store: Store, qstore: QdrantStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer dying after adding the new chunks leaves old and new chunks visible and the
    old hash in place; upserting again finishes the job."""
    doc = DOCS[2][0]
    old = set(ids(qstore.chunks_of(doc.doc_id)))
    new, chunks = edited(doc)

    def crash(point_ids: list[str]) -> None:
        raise RuntimeError("writer killed")

    with monkeypatch.context() as m:
        m.setattr(qstore, "_delete_points", crash)
        with pytest.raises(RuntimeError, match="writer killed"):
            qstore.upsert(new, chunks)
    visible = set(ids(qstore.chunks_of(doc.doc_id)))
    new_ids = {chunk_id(doc.doc_id, c.text, c.start, c.end) for c in chunks}
    assert visible == old | new_ids
    stored = {d.doc_id: d.content_hash for d in qstore.documents()}
    assert stored[doc.doc_id] == doc.content_hash        # the marker still has the old hash
    result = qstore.upsert(new, chunks)
    assert (result.added, result.removed) == (0, len(old - new_ids))
    store.upsert(new, chunks)
    assert qstore.chunks_of(doc.doc_id) == store.chunks_of(doc.doc_id)
    assert qstore.count() == store.count()


# ----------------------------------------------------------------------------- searches

@pytest.mark.parametrize("k", [1, 2, 5, 40, 1000])
def test_dense_equals_store(store: Store, qstore: QdrantStore, k: int) -> None:
    for query in QUERIES:
        assert_same_hits(qstore.search_dense(query, k), store.search_dense(query, k))


def test_dense_ties_broken_by_chunk_id(store: Store, qstore: QdrantStore) -> None:
    query = store.chunks_of("d05")[-1].text
    assert query.endswith("Shock wave drag.")
    hits = qstore.search_dense(query, 3)
    assert hits[0].score == pytest.approx(1.0) and hits[0].score == hits[2].score
    assert ids(hits) == sorted(ids(hits)) == ids(store.search_dense(query, 3))


FILTERS = [
    {"source": "src1.md"}, {"doc_id": ["d01", "d07", "zz"]}, {"title": None},
    {"title": ["Study 4", None]}, {"lang": ["en", "de"]}, {"lang": "la"}, {"lang": "fr"},
    {"year": 2021}, {"year": 2021.0}, {"year": [2020, 2023], "lang": "la"},
    {"weight": 0.5}, {"weight": 1}, {"flag": True}, {"flag": 0}, {"tags": None},
    {"tags": '["a","b"]'}, {"missing.key": None}, {"missing.key": "x"}, {"lang": []},
    {"chunker": "recursive", "source": ["src0.md", "src2.md"]}, {},
]


def test_filters_mean_what_they_mean_in_store(store: Store, qstore: QdrantStore) -> None:
    matched = []
    for flt in FILTERS:
        for query in ("shock wave drag", "heat transfer plate"):
            want = store.search_dense(query, 1000, flt)
            assert ids(qstore.search_dense(query, 1000, flt)) == ids(want), flt
            assert set(ids(qstore.search_bm25(query, 1000, flt))) == \
                set(ids(store.search_bm25(query, 1000, flt))), flt
        matched.append(len(want))
    assert 0 < min(n for n in matched if n) and sorted(set(matched))[0] == 0  # some select none
    assert len(set(matched)) > 8                                            # filters differ


def test_bm25_equals_store_after_reweight(store: Store, qstore: QdrantStore) -> None:
    vocab = {t for doc, _ in DOCS for t in Analyzer().analyze(doc.text)}
    assert len({term_index(t) for t in vocab}) == len(vocab)   # no hash collision here
    lengths = [len(Analyzer().analyze(c.text)) for c in store.chunks_of("d00")]
    first_doc_avgdl = float(np.mean(lengths))
    assert qstore.reweight_bm25() == pytest.approx(store._index.stats().avgdl)
    for query in QUERIES:
        for flt in (None, {"lang": "la"}):
            assert_same_hits(qstore.search_bm25(query, 10, flt),
                             store.search_bm25(query, 10, flt))
    assert qstore.reweight_bm25(first_doc_avgdl) == first_doc_avgdl


def top10_overlap(a: list, b: list) -> float:
    return len(set(ids(a)) & set(ids(b))) / max(1, len(b))


def test_bm25_before_reweight_is_close_to_store(store: Store, qstore: QdrantStore) -> None:
    """avgdl comes from the first document, so scores differ but rankings stay close."""
    before = [top10_overlap(qstore.search_bm25(q, 10), store.search_bm25(q, 10))
              for q in QUERIES]
    assert np.mean(before) >= 0.8
    assert all(h.score > 0 for h in qstore.search_bm25("vortex plate", 50))
    assert qstore.search_bm25("the of and", 10) == store.search_bm25("the of and", 10) == []
    assert qstore.search_bm25("unknownword", 10) == []


def test_hybrid_retriever(store: Store, qstore: QdrantStore) -> None:
    qstore.reweight_bm25()
    for mode in ("hybrid", "dense", "bm25"):
        ours = Retriever(qstore, mode=mode, candidates=20)  # type: ignore[arg-type]
        ref = Retriever(store, mode=mode, candidates=20)
        for query in QUERIES:
            assert_same_hits(ours.search(query, 5, {"lang": ["en", "la"]}),
                             ref.search(query, 5, {"lang": ["en", "la"]}))


# ----------------------------------------------------------------------------- persistence

def test_data_survives_reopening_a_folder(tmp_path: Path, store: Store) -> None:
    folder = tmp_path / "qdrant"
    with QdrantStore(folder, "docs", WordsEmbedder()) as q:
        for doc, chunks in DOCS[:6]:
            q.upsert(doc, chunks)
        q.reweight_bm25(9.5)
        expected = (q.count(), q.documents())
        dense, bm25 = q.search_dense("vortex", 10), q.search_bm25("shock wave", 10)
    with QdrantStore(str(folder), "docs", WordsEmbedder(), avgdl=9.5) as q:
        assert (q.count(), q.documents()) == expected
        # reloaded vectors are scored in float64, fresh ones in float32: equal to 1e-5
        assert_same_hits(q.search_dense("vortex", 10), dense)
        assert_same_hits(q.search_bm25("shock wave", 10), bm25)
        assert q.upsert(*DOCS[0]).unchanged
    with pytest.raises(StoreError, match="embedder_dim"):
        QdrantStore(folder, "docs", WordsEmbedder(dim=16))
    with pytest.raises(StoreError, match="analyzer"):
        QdrantStore(folder, "docs", WordsEmbedder(), analyzer=Analyzer(stemmer=None))
    with pytest.raises(StoreError, match="k1"):
        QdrantStore(folder, "docs", WordsEmbedder(), params=BM25Params(k1=1.5))
    with pytest.raises(StoreError, match="reweight_bm25"):
        QdrantStore(folder, "docs", WordsEmbedder(), avgdl=20.0)


def test_a_client_passed_in_stays_open() -> None:
    client = QdrantClient(":memory:")
    with QdrantStore(client, "a", WordsEmbedder()) as q:
        q.upsert(*DOCS[0])
    assert client.count("a").count > 0                    # still usable after close()
    client.create_collection("foreign", vectors_config=models.VectorParams(
        size=4, distance=models.Distance.DOT))
    with pytest.raises(StoreError, match="not made by QdrantStore"):
        QdrantStore(client, "foreign", WordsEmbedder())
    client.close()


# ----------------------------------------------------------------------------- bad input

class BadEmbedder(WordsEmbedder):
    def embed(self, texts: list[str]) -> np.ndarray:
        return super().embed(texts)[:, :3]


def test_bad_input_is_a_clear_error(tmp_path: Path, qstore: QdrantStore) -> None:
    for k in (0, -1, True, "3", 2.0):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            qstore.search_dense("x", k)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            qstore.search_bm25("x", k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="filter must be a dict"):
        qstore.search_dense("x", 3, [("lang", "en")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="filter key"):
        qstore.search_bm25("x", 3, {"a b": 1})
    with pytest.raises(ValueError, match="filter value for 'lang'"):
        qstore.search_dense("x", 3, {"lang": {"en": 1}})
    with pytest.raises(ValueError, match="finite float"):
        qstore.search_dense("x", 3, {"w": [1.0, float("nan")]})
    with pytest.raises(TypeError, match="query must be a str"):
        qstore.search_dense(None, 3)  # type: ignore[arg-type]
    doc, chunks = DOCS[0]
    with pytest.raises(TypeError, match="document must be a SourceDocument"):
        qstore.upsert(doc.text, chunks)  # type: ignore[arg-type]
    changed = replace(doc, text=doc.text + " more")
    with pytest.raises(TypeError, match="chunks must be Chunk objects"):
        qstore.upsert(changed, ["text"])  # type: ignore[list-item]
    with pytest.raises(StoreError, match="does not match the document text"):
        qstore.upsert(changed, [Chunk("zz", 0, 2)])
    with pytest.raises(ValueError, match="method 'lucene'"):
        QdrantStore(":memory:", "c", WordsEmbedder(), params=BM25Params(method="atire"))
    with pytest.raises(ValueError, match="avgdl must be"):
        QdrantStore(":memory:", "c", WordsEmbedder(), avgdl=-1.0)
    with pytest.raises(ValueError, match="collection must be"):
        QdrantStore(":memory:", "", WordsEmbedder())
    with pytest.raises(StoreError, match="embedder.dim"):
        QdrantStore(":memory:", "c", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="client_or_location must be"):
        QdrantStore(42, "c", WordsEmbedder())
    with pytest.raises(ValueError, match="must be a folder"):
        QdrantStore(tmp_path / "no" / "such", "c", WordsEmbedder())
    with QdrantStore(":memory:", "c", BadEmbedder()) as bad:
        with pytest.raises(StoreError, match=r"expected \(\d+, 48\)"):
            bad.upsert(doc, chunks)
        assert bad.count() == 0 and bad.documents() == []


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"Qdrant at 'http://127.0.0.1:9' \(collection 'c'\)"):
        QdrantStore("http://127.0.0.1:9", "c", WordsEmbedder())


def test_feedback_and_mmr_need_the_sqlite_store() -> None:
    from llmsys.rag.feedback import Feedback
    with QdrantStore(":memory:", "docs", WordsEmbedder()) as q:
        Retriever(q, "hybrid")                            # plain hybrid search works
        with pytest.raises(ValueError, match="QdrantStore lacks embed, vectors"):
            Retriever(q, "hybrid", feedback=Feedback())
        with pytest.raises(ValueError, match="use the SQLite Store for feedback and MMR"):
            Retriever(q, "dense", mmr_lambda=0.5)
