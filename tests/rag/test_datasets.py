"""Tests for llmsys.rag.datasets: Cranfield counts and spot checks, BEIR round trips, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llmsys.rag.datasets import (
    Collection,
    DatasetError,
    Document,
    Query,
    load_beir,
    load_cranfield,
    write_beir,
)

CRANFIELD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cranfield"


@pytest.fixture(scope="module")
def cran() -> Collection:
    if not (CRANFIELD / "cranqrel").is_file():
        pytest.skip(f"Cranfield data not found at {CRANFIELD}")
    return load_cranfield(CRANFIELD)


def small() -> Collection:
    documents = [Document("d1", "Über α", "tab\there, \"quotes\"\nnewline"),
                 Document("d2", "", "no title"), Document("10", "t", "")]
    queries = [Query("q1", "first query"), Query("q2", "second ünïcode")]
    qrels = {"q1": {"d1": 2, "d2": 0}, "q2": {"10": 1, "missing-doc": 3}}
    return Collection("small", documents, queries, qrels)


# ---------------------------------------------------------------------------------------
# Cranfield


def test_cranfield_counts(cran: Collection) -> None:
    assert cran.name == "cranfield"
    assert len(cran.documents) == 1400
    assert [d.id for d in cran.documents] == [str(i) for i in range(1, 1401)]
    assert len(cran.queries) == 225
    assert [q.id for q in cran.queries] == [str(i) for i in range(1, 226)]
    assert cran.dropped_queries == 0
    assert len(cran.qrels) == 225                      # every query has a graded judgment
    assert sum(len(j) for j in cran.qrels.values()) == 1612
    grades = Counter(g for j in cran.qrels.values() for g in j.values())
    assert grades == {4: 128, 3: 387, 2: 734, 1: 363}  # codes 1, 2, 3, 4


def test_cranfield_spot_checks(cran: Collection) -> None:
    queries = {q.id: q.text for q in cran.queries}
    assert queries["1"].startswith("what similarity laws must be obeyed")
    # the third query is `.I 004` in cran.qry: ids are positions, not .I numbers
    assert queries["3"].startswith("what problems of heat conduction in composite slabs")
    assert queries["225"].startswith("what design factors can be used to control lift-drag")
    assert cran.qrels["1"]["184"] == 3                 # "1 184 2": code 2 -> grade 3
    assert cran.qrels["1"]["13"] == 1                  # "1 13 4": code 4 -> grade 1
    assert "486" not in cran.qrels["1"]                # "1 486 -1": dropped
    assert "1188" not in cran.qrels["225"]                # "225 1188 -1": dropped
    docs = {d.id: d for d in cran.documents}
    assert docs["1"].title == ("experimental investigation of the aerodynamics of a wing in a "
                               "slipstream .")
    assert docs["1"].text.startswith("experimental investigation of the aerodynamics of a wing")
    assert docs["1"].text.endswith("for the specific configuration of the experiment .")
    assert docs["471"] == Document("471", "", "") and docs["995"] == Document("995", "", "")
    # stray ".A" / ".B" lines inside document 240's text: the text around them is kept
    assert "application to turbulent separations" in docs["240"].text
    assert "unity in low-speed flow" in docs["240"].text
    assert docs["240"].text.endswith("heat transfer in a laminar separated flow .")
    assert not any(".W" in d.text.split() for d in cran.documents)


def test_cranfield_as_beir_round_trip(cran: Collection, tmp_path: Path) -> None:
    directory = write_beir(cran, tmp_path / "cranfield")
    assert (directory / "qrels" / "test.tsv").read_text().startswith("query-id\tcorpus-id\tscore")
    assert load_beir(directory) == cran


def write_cranfield(directory: Path, qrels: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "cran.all.1400").write_text(
        ".I 1\n.T\nfirst  title\n.A\nsomeone\n.B\nbib\n.W\nfirst\ntext .\n"
        ".I 2\n.T\nsecond\n.W\nsecond text\n")
    (directory / "cran.qry").write_text(".I 001\n.W\nquery one\n.I 004\n.W\nquery\ntwo\n")
    (directory / "cranqrel").write_text(qrels)
    return directory


def test_cranfield_small_files(tmp_path: Path) -> None:
    c = load_cranfield(write_cranfield(tmp_path, "1 1 1\r\n1 2 5\n2 2 -1\n"))
    assert c.documents == [Document("1", "first title", "first text ."),
                           Document("2", "second", "second text")]
    assert c.queries == [Query("1", "query one")]      # query 2 has no graded judgment
    assert c.dropped_queries == 1
    assert c.qrels == {"1": {"1": 4}}


@pytest.mark.parametrize(("qrels", "message"), [
    ("1 1 7\n", r"cranqrel:1: relevance code 7 is not one of 1, 2, 3, 4, 5 or -1"),
    ("1 1 2\n3 1 2\n", r"cranqrel:2: query 3 is not a position in cran.qry \(1..2\)"),
    ("1 9 2\n", r"cranqrel:1: document 9 is not in cran.all.1400"),
    ("1 1\n", r"cranqrel:1: expected 'query doc code' \(three integers\), got '1 1'"),
    ("1 1 x\n", r"cranqrel:1: expected 'query doc code'"),
    ("1 1 2\n1 1 3\n", r"cranqrel:2: query '1' judges document '1' again with grade 2"),
])
def test_cranfield_bad_qrels(tmp_path: Path, qrels: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_cranfield(write_cranfield(tmp_path, qrels))


def test_cranfield_bad_smart(tmp_path: Path) -> None:
    directory = write_cranfield(tmp_path, "1 1 1\n")
    (directory / "cran.qry").write_text("query first\n.I 1\n.W\nq\n")
    with pytest.raises(DatasetError, match=r"cran.qry:1: expected '.I <id>' to start a record"):
        load_cranfield(directory)
    (directory / "cran.qry").write_text(".I 1\n.X\nq\n")
    with pytest.raises(DatasetError, match=r"cran.qry:2: unknown field '.X'; expected one of .W"):
        load_cranfield(directory)
    (directory / "cran.all.1400").write_text(".I one\n.T\nt\n")
    with pytest.raises(DatasetError, match=r"cran.all.1400:1: expected '.I <number>'"):
        load_cranfield(directory)
    (directory / "cranqrel").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file .*cranqrel"):
        load_cranfield(directory)


# ---------------------------------------------------------------------------------------
# BEIR


def test_beir_round_trip(tmp_path: Path) -> None:
    c = small()
    write_beir(c, tmp_path / "small")
    assert load_beir(tmp_path / "small") == c
    write_beir(c, tmp_path / "other", split="dev")
    loaded = load_beir(tmp_path / "other", split="dev", name="small")
    assert loaded == c and loaded.dropped_queries == 0


def write_files(directory: Path, corpus: str, queries: str, qrels: str,
                split: str = "test") -> Path:
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    (directory / "corpus.jsonl").write_text(corpus)
    (directory / "queries.jsonl").write_text(queries)
    (directory / "qrels" / f"{split}.tsv").write_text(qrels)
    return directory


CORPUS = '{"_id": "a", "title": "A", "text": "alpha"}\n\n{"_id": "b", "text": "beta"}\n'
QUERIES = '{"_id": "1", "text": "one"}\n{"_id": "2", "text": "two"}\n{"_id": "3", "text": "3"}\n'


def test_beir_loading(tmp_path: Path) -> None:
    c = load_beir(write_files(tmp_path, CORPUS, QUERIES,
                              "query-id\tcorpus-id\tscore\n3\ta\t1\n1\tb\t0\n1\ta\t2\n"))
    assert c.name == tmp_path.name
    assert c.documents == [Document("a", "A", "alpha"), Document("b", "", "beta")]
    assert c.queries == [Query("1", "one"), Query("3", "3")]
    assert c.dropped_queries == 1
    assert c.qrels == {"3": {"a": 1}, "1": {"b": 0, "a": 2}}
    # no header line, integer ids
    c = load_beir(write_files(tmp_path, '{"_id": 7, "title": null, "text": "x"}\n',
                              '{"_id": 1, "text": "q"}\n', "1\t7\t1\n"))
    assert c.documents == [Document("7", "", "x")] and c.qrels == {"1": {"7": 1}}


@pytest.mark.parametrize(("corpus", "queries", "qrels", "message"), [
    ("{bad json\n", QUERIES, "", r"corpus.jsonl:1: expected one JSON object per line"),
    ("[1, 2]\n", QUERIES, "", r"corpus.jsonl:1: expected a JSON object, got list"),
    ('{"title": "t", "text": "x"}\n', QUERIES, "", r"corpus.jsonl:1: expected a non-empty "
                                                     r"string '_id', got None"),
    ('{"_id": "a"}\n', QUERIES, "", r"corpus.jsonl:1: expected a string 'text', got None"),
    (CORPUS + '{"_id": "a", "text": "again"}\n', QUERIES, "",
     r"corpus.jsonl:4: id 'a' occurs again \(first on line 1\)"),
    (CORPUS, QUERIES, "query-id\tcorpus-id\tscore\n1 a 1\n",
     r"test.tsv:2: expected 'query-id<TAB>corpus-id<TAB>score' with an integer score, "
     r"got '1 a 1'"),
    (CORPUS, QUERIES, "1\ta\thigh\n", r"test.tsv:1: expected 'query-id<TAB>corpus-id"),
    (CORPUS, QUERIES, "9\ta\t1\n", r"test.tsv:1: query id '9' is not in queries.jsonl"),
    (CORPUS, QUERIES, "1\ta\t1\n1\ta\t2\n", r"test.tsv:2: query '1' judges document 'a' again"),
])
def test_beir_errors(tmp_path: Path, corpus: str, queries: str, qrels: str,
                     message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_beir(write_files(tmp_path, corpus, queries, qrels))


def test_beir_missing_files(tmp_path: Path) -> None:
    directory = write_files(tmp_path, CORPUS, QUERIES, "1\ta\t1\n", split="dev")
    with pytest.raises(FileNotFoundError, match=r"split 'test'; splits found: \['dev'\]"):
        load_beir(directory)
    (directory / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file .*queries.jsonl: a BEIR"):
        load_beir(directory, split="dev")


def test_write_beir_rejects_tab_in_id(tmp_path: Path) -> None:
    c = Collection("c", [], [Query("q\t1", "x")], {"q\t1": {"d": 1}})
    with pytest.raises(DatasetError, match=r"query id 'q\\t1' cannot be written"):
        write_beir(c, tmp_path)
    assert list(tmp_path.iterdir()) == []           # nothing half-written


def test_written_corpus_is_plain_beir(tmp_path: Path) -> None:
    write_beir(small(), tmp_path)
    first = json.loads((tmp_path / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == {"_id": "d1", "title": "Über α", "text": "tab\there, \"quotes\"\nnewline"}


# ---------------------------------------------------------------------------------------
# split


def test_split(cran: Collection) -> None:
    dev, test = cran.split(0.2, seed=0)
    assert (dev.name, test.name) == ("cranfield-dev", "cranfield-test")
    assert (len(dev.queries), len(test.queries)) == (45, 180)
    dev_ids, test_ids = {q.id for q in dev.queries}, {q.id for q in test.queries}
    assert not dev_ids & test_ids and dev_ids | test_ids == {q.id for q in cran.queries}
    assert set(dev.qrels) == dev_ids and set(test.qrels) == test_ids
    assert all(dev.qrels[q] == cran.qrels[q] for q in dev_ids)
    assert dev.documents == cran.documents
    order = [q.id for q in cran.queries]
    assert [q.id for q in dev.queries] == sorted(dev_ids, key=order.index)
    assert cran.split(0.2, seed=0) == (dev, test)
    assert cran.split(0.2, seed=1)[0] != dev


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 0.1])
def test_split_errors(fraction: float) -> None:
    with pytest.raises(ValueError, match=f"split fraction {fraction!r}"):
        small().split(fraction)


def test_a_beir_file_that_is_not_utf8_is_a_dataset_error(tmp_path) -> None:
    from llmsys.rag.datasets import DatasetError, load_beir
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "caf\xe9"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DatasetError, match=r"corpus.jsonl: not UTF-8 text"):
        load_beir(tmp_path)
