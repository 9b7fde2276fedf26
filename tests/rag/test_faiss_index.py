"""Tests of llmsys.rag.faiss_index: the FAISS HNSW index kept in step with a `Store`.

Every chunk's text is "v<i>" and a table embedder maps it to row i of a fixed matrix of
clustered unit vectors ("q<i>" maps to query i), so exact numpy brute force over the rows
in the store is the reference every search is checked against.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("apsw")
pytest.importorskip("sqlite_vec")
pytest.importorskip("Stemmer")

from llmsys.rag import faiss_index  # noqa: E402
from llmsys.rag.chunking import Chunk  # noqa: E402
from llmsys.rag.faiss_index import FaissHNSWIndex, HNSWConfig, side_path  # noqa: E402
from llmsys.rag.readers import SourceDocument  # noqa: E402
from llmsys.rag.store import Store, chunk_id  # noqa: E402

DIM = 32
N_VECTORS = 3000
GRAPH = HNSWConfig(m=16, ef_construction=80, ef_search=128, exact_max=0)  # always the graph


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread: the test machine's cores are shared."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def clustered(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Unit vectors scattered around random cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


VECTORS = clustered(4000, seed=1)  # the big store holds the first N_VECTORS
QUERIES = clustered(200, seed=2)


class TableEmbedder:
    """"v<i>" -> VECTORS[i], "q<i>" -> QUERIES[i]."""

    name = "table-test"
    dim = DIM

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            m = re.fullmatch(r"([vq])(\d+)", text)
            assert m, text
            rows.append((VECTORS if m[1] == "v" else QUERIES)[int(m[2])])
        return np.array(rows, dtype=np.float32)


class Corpus:
    """Documents of "v<i>" chunks; knows the chunk id of every vector in it."""

    def __init__(self) -> None:
        self.docs: dict[str, list[int]] = {}
        self.group: dict[str, str] = {}
        self._ids: dict[str, dict[str, int]] = {}  # doc id -> chunk id -> vector row

    def document(self, doc_id: str, rows: list[int], group: str = "a"
                 ) -> tuple[SourceDocument, list[Chunk]]:
        self.docs[doc_id], self.group[doc_id] = rows, group
        text = " ".join(f"v{i}" for i in rows)
        chunks, start = [], 0
        for i in rows:
            word = f"v{i}"
            chunks.append(Chunk(word, start, start + len(word)))
            start += len(word) + 1
        self._ids[doc_id] = {chunk_id(doc_id, c.text, c.start, c.end): i
                             for c, i in zip(chunks, rows, strict=True)}
        doc = SourceDocument(doc_id, text, None, f"/corpus/{doc_id}.txt", {"group": group})
        return doc, chunks

    def put(self, store: Store, doc_id: str, rows: list[int], group: str = "a") -> None:
        store.upsert(*self.document(doc_id, rows, group))

    def delete(self, store: Store, doc_id: str) -> None:
        store.delete(doc_id)
        del self.docs[doc_id], self.group[doc_id], self._ids[doc_id]

    def chunk_ids(self, groups: set[str] | None = None, docs: set[str] | None = None
                  ) -> dict[str, int]:
        """chunk id -> vector row of every chunk (in the given groups and documents)."""
        out = {}
        for doc, ids in self._ids.items():
            if (groups is None or self.group[doc] in groups) and (docs is None or doc in docs):
                out.update(ids)
        return out

    def exact(self, query: np.ndarray, k: int, groups: set[str] | None = None,
              docs: set[str] | None = None) -> list[str]:
        """The reference: numpy brute force cosine top k, ties by chunk id."""
        cids = self.chunk_ids(groups, docs)
        scores = VECTORS[list(cids.values())] @ query
        return [c for _, c in sorted(zip(-scores, cids))[:k]]


def build(store: Store, corpus: Corpus, n_docs: int, per_doc: int, offset: int = 0) -> None:
    for d in range(n_docs):
        first = offset + d * per_doc
        corpus.put(store, f"doc{d:03d}", list(range(first, first + per_doc)),
                   group="abc"[d % 3])


def recall(store: Store, corpus: Corpus, n_queries: int, k: int = 10,
           groups: set[str] | None = None) -> float:
    found = 0
    for qi in range(n_queries):
        filt = None if groups is None else {"group": sorted(groups)}
        hits = store.search_dense(f"q{qi}", k=k, filter=filt)
        found += len({h.chunk_id for h in hits} & set(corpus.exact(QUERIES[qi], k, groups)))
    return found / (n_queries * k)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Corpus]:
    """A store file of 3000 vectors in 60 documents (built once, without an index)."""
    db = tmp_path_factory.mktemp("big") / "big.db"
    corpus = Corpus()
    with Store(db, TableEmbedder()) as store:
        build(store, corpus, n_docs=60, per_doc=50)
    return db, corpus


def test_recall_and_scores_against_exact_search(big: tuple[Path, Corpus]) -> None:
    db, corpus = big
    index = FaissHNSWIndex(GRAPH)
    with Store(db, TableEmbedder(), vector_index=index) as store:
        assert index.stats.vectors == N_VECTORS
        assert recall(store, corpus, n_queries=100) >= 0.95
        rows = corpus.chunk_ids()
        for qi in range(20):
            hits = store.search_dense(f"q{qi}", k=10)
            assert len(hits) == 10
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            for h in hits:
                exact = float(VECTORS[rows[h.chunk_id]] @ QUERIES[qi])
                assert h.score == pytest.approx(exact, abs=1e-5)
                assert h.text == f"v{rows[h.chunk_id]}"


def test_exact_path_equals_the_store_without_index(big: tuple[Path, Corpus]) -> None:
    db, corpus = big
    index = FaissHNSWIndex(HNSWConfig(exact_max=N_VECTORS))
    with Store(db, TableEmbedder()) as plain, \
            Store(db, TableEmbedder(), vector_index=index) as indexed:
        for qi in range(10):
            for filt in (None, {"group": ["b"]}):
                want = plain.search_dense(f"q{qi}", k=7, filter=filt)
                got = indexed.search_dense(f"q{qi}", k=7, filter=filt)
                assert [h.chunk_id for h in got] == [h.chunk_id for h in want]
                assert [h.score for h in got] == pytest.approx([h.score for h in want],
                                                               abs=1e-5)
                assert [h.chunk_id for h in got] == corpus.exact(
                    QUERIES[qi], 7, None if filt is None else {"b"})


@pytest.mark.parametrize("exact_max", [0, None, 10_000])
def test_filters_give_only_allowed_chunks(big: tuple[Path, Corpus], exact_max: int | None
                                          ) -> None:
    db, corpus = big
    index = FaissHNSWIndex(HNSWConfig(m=16, ef_construction=80, ef_search=128,
                                      exact_max=exact_max))
    with Store(db, TableEmbedder(), vector_index=index) as store:
        allowed = set(corpus.chunk_ids({"a", "c"}))
        for qi in range(30):
            hits = store.search_dense(f"q{qi}", k=10, filter={"group": ["a", "c"]})
            assert len(hits) == 10 and {h.chunk_id for h in hits} <= allowed
        assert recall(store, corpus, 30, groups={"a", "c"}) >= (1.0 if exact_max else 0.95)
        one_doc = store.search_dense("q0", k=100, filter={"doc_id": "doc007"})
        assert [h.chunk_id for h in one_doc] == corpus.exact(QUERIES[0], 100, docs={"doc007"})
        assert store.search_dense("q0", k=5, filter={"group": "nope"}) == []
        with pytest.raises(ValueError, match="filter value"):
            store.search_dense("q0", k=5, filter={"group": [1.5, float("nan")]})


def test_a_selective_filter_widens_the_graph_search(big: tuple[Path, Corpus]) -> None:
    """200 of 3000 chunks allowed, searched in the graph: efSearch grows by 3000 / 200, so
    recall stays high even with a small ef_search (about 0.7 without the widening)."""
    db, corpus = big
    docs = {"doc001", "doc017", "doc033", "doc049"}
    index = FaissHNSWIndex(HNSWConfig(m=16, ef_construction=80, ef_search=16, exact_max=0))
    with Store(db, TableEmbedder(), vector_index=index) as store:
        found = 0
        for qi in range(50):
            hits = store.search_dense(f"q{qi}", k=10, filter={"doc_id": sorted(docs)})
            assert {h.doc_id for h in hits} <= docs
            found += len({h.chunk_id for h in hits} & set(corpus.exact(QUERIES[qi], 10,
                                                                        docs=docs)))
        assert found / 500 >= 0.95


def test_ties_are_broken_by_chunk_id(tmp_path: Path) -> None:
    corpus = Corpus()
    for exact_max in (0, 100):
        index = FaissHNSWIndex(HNSWConfig(m=8, exact_max=exact_max))
        with Store(tmp_path / f"ties{exact_max}.db", TableEmbedder(),
                   vector_index=index) as store:
            for d in range(6):  # six documents holding the same vector v7, plus others
                corpus.put(store, f"t{d}", [7, 100 + 10 * d, 101 + 10 * d])
            hits = store.search_dense("v7", k=4)
            assert all(h.score == pytest.approx(1.0, abs=1e-6) for h in hits)
            tied = sorted(chunk_id(f"t{d}", "v7", 0, 2) for d in range(6))
            assert [h.chunk_id for h in hits] == tied[:4]


def test_kept_in_step_with_upserts_changes_and_deletes(tmp_path: Path) -> None:
    corpus = Corpus()
    index = FaissHNSWIndex(HNSWConfig(m=8, ef_construction=64, exact_max=0,
                                      max_tombstone_fraction=0.9))
    with Store(tmp_path / "s.db", TableEmbedder(), vector_index=index) as store:
        build(store, corpus, n_docs=20, per_doc=20)
        assert index.stats.vectors == 400 and index.check() == []
        before = set(corpus.chunk_ids())
        corpus.put(store, "doc003", list(range(60, 70)) + list(range(3000, 3010)))  # change
        corpus.delete(store, "doc005")
        corpus.put(store, "new", list(range(3500, 3520)))
        gone = before - set(corpus.chunk_ids())
        assert len(gone) == 30  # 10 chunks of doc003, all 20 of doc005
        assert index.stats.tombstones == 30 and index.stats.vectors == 400
        assert index.check() == [] and store.check().ok
        stored = set(corpus.chunk_ids())
        for i in [*range(3000, 3010), *range(3500, 3520), 61]:  # new and kept chunks
            top = store.search_dense(f"v{i}", k=1)[0]
            assert top.text == f"v{i}" and top.score == pytest.approx(1.0, abs=1e-5)
        for i in [*range(70, 80), *range(100, 120)]:  # vectors of the removed chunks
            hits = store.search_dense(f"v{i}", k=10)
            assert {h.chunk_id for h in hits} <= stored and not {h.chunk_id for h in hits} & gone
        assert recall(store, corpus, n_queries=40) >= 0.95


def test_compaction_drops_tombstones(tmp_path: Path) -> None:
    corpus = Corpus()
    index = FaissHNSWIndex(HNSWConfig(m=8, exact_max=0, max_tombstone_fraction=0.25))
    with Store(tmp_path / "c.db", TableEmbedder(), vector_index=index) as store:
        build(store, corpus, n_docs=10, per_doc=30)
        for d in range(2):
            corpus.delete(store, f"doc{d:03d}")
        assert index.stats.compactions == 0 and index.stats.tombstones == 60
        corpus.delete(store, "doc002")  # 90 of 300 positions dead > 25%
        assert index.stats.compactions == 1
        assert index.stats.tombstones == 0 and index.stats.vectors == 210
        assert index.check() == []
        assert recall(store, corpus, n_queries=30) >= 0.95


def reopen_stats(db: Path, config: HNSWConfig = GRAPH) -> tuple[faiss_index.IndexStats, list]:
    """Open the store with a fresh index: its stats and the ids of a few searches."""
    index = FaissHNSWIndex(config)
    with Store(db, TableEmbedder(), vector_index=index) as store:
        stats = index.stats
        assert index.check() == []
        results = [[h.chunk_id for h in store.search_dense(f"q{qi}", k=10)] for qi in range(20)]
    return stats, results


def make_indexed(db: Path) -> Corpus:
    corpus = Corpus()
    with Store(db, TableEmbedder(), vector_index=FaissHNSWIndex(GRAPH)) as store:
        build(store, corpus, n_docs=12, per_doc=25)
    return corpus


def test_reopen_reuses_a_matching_side_file(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    corpus = make_indexed(db)
    assert side_path(db) == tmp_path / "r.db.faiss" and side_path(db).exists()
    first, results = reopen_stats(db)
    assert first.loaded and first.rebuilds == 0 and first.catch_ups == 0
    assert first.vectors == 300 and first.saves == 0
    second, again = reopen_stats(db)
    assert second.loaded and second.rebuilds == 0 and again == results
    assert sum(len(set(r) & set(corpus.exact(QUERIES[qi], 10)))
               for qi, r in enumerate(results)) >= 0.95 * 200


@pytest.mark.parametrize("damage", ["written_without_index", "deleted", "truncated",
                                    "bytes_flipped", "vector_altered", "garbage", "other_m"])
def test_stale_or_broken_side_file_is_never_trusted(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "d.db"
    corpus = make_indexed(db)
    side = side_path(db)
    assert side is not None
    data = side.read_bytes()
    config = GRAPH
    if damage == "written_without_index":
        with Store(db, TableEmbedder()) as plain:
            corpus.delete(plain, "doc004")
            corpus.put(plain, "doc100", list(range(3000, 3025)))
    elif damage == "deleted":
        side.unlink()
    elif damage == "truncated":
        side.write_bytes(data[:len(data) // 2])
    elif damage == "bytes_flipped":
        middle = len(data) // 2
        side.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
                         + data[middle + 64:])
    elif damage == "vector_altered":  # a well-formed file whose graph holds a wrong vector
        with np.load(side) as npz:
            arrays = {name: npz[name] for name in npz.files}
        arrays["index"] = arrays["index"].copy()
        arrays["index"][-4 * DIM * 10 + 3] ^= 0x40  # the vectors come last: one exponent
        with open(side, "wb") as f:
            np.savez(f, **arrays)
    elif damage == "garbage":
        side.write_bytes(b"not an index at all")
    else:
        config = HNSWConfig(m=12, ef_construction=100, exact_max=0)
    stats, results = reopen_stats(db, config)
    if damage == "written_without_index":
        assert stats.loaded and stats.catch_ups == 1 and stats.rebuilds == 0
    else:
        assert not stats.loaded and stats.rebuilds == 1 and stats.rebuild_reason
    stored = set(corpus.chunk_ids())
    assert all(set(r) <= stored for r in results)
    assert sum(len(set(r) & set(corpus.exact(QUERIES[qi], 10)))
               for qi, r in enumerate(results)) >= 0.95 * 200
    after, _ = reopen_stats(db, config)  # the repaired index was saved on close
    assert after.loaded and after.rebuilds == 0 and after.catch_ups == 0


def test_a_second_writer_is_caught_up(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    corpus = Corpus()
    index = FaissHNSWIndex(HNSWConfig(m=8, exact_max=0, max_tombstone_fraction=0.5))
    with Store(db, TableEmbedder(), vector_index=index) as first:
        build(first, corpus, n_docs=8, per_doc=25)
        with Store(db, TableEmbedder()) as second:
            corpus.delete(second, "doc002")
            corpus.put(second, "other", list(range(2000, 2010)))
            top = first.search_dense("v2005", k=1)[0]  # the search catches up first
            assert top.text == "v2005" and top.doc_id == "other"
            assert index.stats.catch_ups == 1 and index.stats.vectors == 185
            hits = first.search_dense("v60", k=10)   # v60 was in the deleted doc002
            assert all(h.doc_id != "doc002" for h in hits)
            corpus.put(second, "other2", list(range(2100, 2110)))
            corpus.put(first, "mine", list(range(2200, 2210)))  # commit sees the other write
            assert index.stats.catch_ups == 2 and index.stats.vectors == 205
            assert index.check() == []
            assert first.search_dense("v2103", k=1)[0].doc_id == "other2"
        assert recall(first, corpus, n_queries=30) >= 0.95


def test_save_is_atomic_and_a_failed_save_leaves_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "a.db"
    corpus = make_indexed(db)
    side = side_path(db)
    assert side is not None
    before = side.read_bytes()
    index = FaissHNSWIndex(GRAPH)
    store = Store(db, TableEmbedder(), vector_index=index)
    corpus.put(store, "late", list(range(3900, 3920)))

    def killed(src: str, dst: str) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr(faiss_index.os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        store.close()
    monkeypatch.undo()
    assert side.read_bytes() == before                       # the old file, untouched
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    stats, _ = reopen_stats(db)                              # old file: caught up
    assert stats.loaded and stats.catch_ups == 1 and stats.vectors == 320


def test_save_every_and_in_memory_store(tmp_path: Path) -> None:
    corpus = Corpus()
    index = FaissHNSWIndex(HNSWConfig(m=8, save_every=40))
    with Store(tmp_path / "e.db", TableEmbedder(), vector_index=index) as store:
        build(store, corpus, n_docs=4, per_doc=25)
        assert index.stats.saves == 2 and side_path(tmp_path / "e.db").exists()
    memory = FaissHNSWIndex(HNSWConfig(m=8, exact_max=0))
    with Store(":memory:", TableEmbedder(), vector_index=memory) as store:
        build(store, Corpus(), n_docs=3, per_doc=10)
        assert store.search_dense("v12", k=1)[0].text == "v12"
    assert memory.stats.saves == 0 and side_path(":memory:") is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"m": 1}, "m must be an int in"), ({"m": True}, "m must be an int in"),
    ({"m": 16.0}, "m must be an int in"), ({"ef_construction": 0}, "ef_construction"),
    ({"ef_search": -3}, "ef_search"), ({"max_tombstone_fraction": 0.0}, "max_tombstone"),
    ({"max_tombstone_fraction": 1.0}, "max_tombstone"),
    ({"max_tombstone_fraction": "0.2"}, "max_tombstone"), ({"exact_max": -1}, "exact_max"),
    ({"save_every": 0}, "save_every"), ({"save_every": 2.5}, "save_every"),
])
def test_bad_config_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HNSWConfig(**kwargs)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="HNSWConfig"):
        FaissHNSWIndex({"m": 16})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="vector_index must be a FaissHNSWIndex"):
        Store(tmp_path / "x.db", TableEmbedder(), vector_index="faiss")  # type: ignore[arg-type]
    index = FaissHNSWIndex()
    with pytest.raises(ValueError, match="not open"):
        index.search(QUERIES[0], 3)
    with Store(tmp_path / "y.db", TableEmbedder(), vector_index=index) as store:
        with pytest.raises(ValueError, match="already open"):
            Store(tmp_path / "z.db", TableEmbedder(), vector_index=index)
        with pytest.raises(ValueError, match=r"shape \(32,\)"):
            index.search(np.zeros(5, dtype=np.float32), 3)
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            index.search(QUERIES[0], 0)
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            store.search_dense("q1", k=0)
        assert store.search_dense("q1", k=3) == []  # empty store
