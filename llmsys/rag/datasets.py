"""IR test collections (documents, queries, graded judgments) loaded into one in-memory shape.

    from llmsys.rag.datasets import load_beir, load_cranfield, write_beir

    cran = load_cranfield("data/cranfield")       # cran.all.1400, cran.qry, cranqrel
    dev, test = cran.split(0.2, seed=0)           # tune on dev, report on test
    write_beir(cran, "data/cranfield-beir")       # the same collection in BEIR format
    scifact = load_beir("data/scifact", split="test")
    scifact.qrels["1"]                            # {"31715818": 1}: doc id -> grade

A `Collection` holds `Document`s, `Query`s and qrels: query id -> doc id -> graded relevance
(an int, higher = more relevant; 0, negative or absent = not relevant). Every id is a string.
Loaders keep only queries that have at least one judgment and count the others in
`Collection.dropped_queries`.

BEIR (`load_beir`, `write_beir`): a directory with `corpus.jsonl` (`_id`, `title`, `text`),
`queries.jsonl` (`_id`, `text`) and `qrels/<split>.tsv` (header `query-id corpus-id score`,
tab-separated). A judgment for a query missing from `queries.jsonl` is an error; one for a
document missing from the corpus is kept (it still counts as a relevant document to find).

Cranfield 1400 (`load_cranfield`), in SMART format (`.I` id, `.T` title, `.A` authors,
`.B` bibliography, `.W` text):

- Documents get their `.I` number as id ("1".."1400"); title is `.T`, text is `.W`, both with
  whitespace collapsed (the line breaks are typewriter wrapping). Documents 471 and 995 are
  empty in the file and kept empty. Everything after a record's `.W` up to the next `.I` is
  text: documents 240, 576 and 578 carry stray `.A`, `.B` and `.W` lines inside their text
  (a known defect of the file); those marker lines are dropped, their text kept.
- The `.I` numbers in `cran.qry` skip values (001, 002, 004, ...), but `cranqrel` numbers
  queries by position, so query ids are the positions "1".."225".
- `cranqrel` lines are `query doc code` with Cleverdon's codes 1 (complete answer), 2 (high
  relevance), 3 (useful), 4 (minimum interest), 5 (no interest). Codes 1..4 become grades
  `5 - code` (4, 3, 2, 1). Code 5 and code -1 mean no relevance and are dropped. The file has
  no 5s; -1 (not described by `cranqrel.readme`) occurs once for each of the 225 queries.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmsys.rag.metrics import utf8_lines

__all__ = ["Collection", "DatasetError", "Document", "Query", "load_beir", "load_cranfield",
           "write_beir"]

Qrels = dict[str, dict[str, int]]

_CRANFIELD_GRADES = {1: 4, 2: 3, 3: 2, 4: 1}   # Cleverdon code -> grade
_CRANFIELD_NOT_RELEVANT = {5, -1}
_RECORD = re.compile(r"\.I(?:\s+(\S*))?\s*$")
_MARKER = re.compile(r"\.([A-Z])\s*$")


class DatasetError(ValueError):
    """A data file is malformed or inconsistent; the message names the file and line."""


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True)
class Collection:
    """Documents, queries and their judgments (query id -> doc id -> grade)."""

    name: str
    documents: list[Document]
    queries: list[Query]
    qrels: Qrels
    dropped_queries: int = field(default=0, compare=False)  # queries without judgments

    def split(self, fraction: float, seed: int = 0) -> tuple[Collection, Collection]:
        """(dev, test): a random `fraction` of the queries (rounded) and the rest.

        Deterministic for a given seed; both parts share the documents and keep the
        queries' original order.
        """
        if not 0 < fraction < 1:
            raise ValueError(f"split fraction {fraction!r} is not allowed: it must be "
                             f"between 0 and 1 (exclusive)")
        order = list(range(len(self.queries)))
        random.Random(seed).shuffle(order)
        n_dev = round(fraction * len(order))
        if n_dev in (0, len(order)):
            raise ValueError(f"split fraction {fraction!r} of {len(order)} queries leaves "
                             f"one part empty; choose a fraction giving both parts a query")
        dev = set(order[:n_dev])
        return (self._with_queries("dev", [q for i, q in enumerate(self.queries) if i in dev]),
                self._with_queries("test",
                                   [q for i, q in enumerate(self.queries) if i not in dev]))

    def _with_queries(self, part: str, queries: list[Query]) -> Collection:
        qrels = {q.id: dict(self.qrels[q.id]) for q in queries if q.id in self.qrels}
        return Collection(f"{self.name}-{part}", list(self.documents), queries, qrels)


# ---------------------------------------------------------------------------------------
# BEIR


def load_beir(directory: str | Path, split: str = "test", name: str | None = None) -> Collection:
    """Load a BEIR directory; `split` picks `qrels/<split>.tsv`; name defaults to the dir name."""
    directory = Path(directory)
    corpus, queries_path = directory / "corpus.jsonl", directory / "queries.jsonl"
    qrels_path = directory / "qrels" / f"{split}.tsv"
    for path in (corpus, queries_path):
        _require_file(path, "a BEIR directory needs corpus.jsonl, queries.jsonl and "
                            "qrels/<split>.tsv")
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"no qrels file {qrels_path} for split {split!r}; "
                                f"splits found: {splits or 'none'}")
    rows = list(_read_jsonl(corpus))
    documents = [Document(_json_id(corpus, n, r), _json_text(corpus, n, r, "title", ""),
                          _json_text(corpus, n, r, "text")) for n, r in rows]
    _check_unique(corpus, [n for n, _ in rows], [d.id for d in documents])
    rows = list(_read_jsonl(queries_path))
    queries = [Query(_json_id(queries_path, n, r), _json_text(queries_path, n, r, "text"))
               for n, r in rows]
    _check_unique(queries_path, [n for n, _ in rows], [q.id for q in queries])
    qrels = _read_beir_qrels(qrels_path, {q.id for q in queries})
    judged = [q for q in queries if q.id in qrels]
    return Collection(name or directory.name, documents, judged, qrels,
                      dropped_queries=len(queries) - len(judged))


def write_beir(collection: Collection, directory: str | Path, split: str = "test") -> Path:
    """Write `collection` as a BEIR directory (created if needed); returns the directory.

    `load_beir` gives the collection back, minus queries that have no judgments.
    """
    for query_id, judgments in collection.qrels.items():  # before any file is touched
        _check_tsv_id(query_id, "query")
        for doc_id in judgments:
            _check_tsv_id(doc_id, "document")
    directory = Path(directory)
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    with (directory / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for d in collection.documents:
            f.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text},
                               ensure_ascii=False) + "\n")
    with (directory / "queries.jsonl").open("w", encoding="utf-8") as f:
        for q in collection.queries:
            f.write(json.dumps({"_id": q.id, "text": q.text}, ensure_ascii=False) + "\n")
    with (directory / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for query_id, judgments in collection.qrels.items():
            for doc_id, grade in judgments.items():
                f.write(f"{query_id}\t{doc_id}\t{int(grade)}\n")
    return directory


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for line_no, line in utf8_lines(path, DatasetError):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{line_no}: expected one JSON object per line "
                               f"({e.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{line_no}: expected a JSON object, got "
                               f"{type(record).__name__}")
        yield line_no, record


def _json_id(path: Path, line_no: int, record: dict) -> str:
    value = record.get("_id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise DatasetError(f"{path}:{line_no}: expected a non-empty string '_id', "
                           f"got {value!r}")
    return str(value)


def _json_text(path: Path, line_no: int, record: dict, key: str,
               default: str | None = None) -> str:
    value = record.get(key, default)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise DatasetError(f"{path}:{line_no}: expected a string {key!r}, got {value!r}")
    return value


def _read_beir_qrels(path: Path, query_ids: set[str]) -> Qrels:
    qrels: Qrels = {}
    for line_no, line in utf8_lines(path, DatasetError):
        line = line.rstrip("\r\n")
        if not line.strip() or (line_no == 1 and line.startswith("query-id")):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not re.fullmatch(r"-?\d+", parts[2].strip()):
            raise DatasetError(f"{path}:{line_no}: expected 'query-id<TAB>corpus-id<TAB>"
                               f"score' with an integer score, got {line!r}")
        query_id, doc_id, grade = parts[0].strip(), parts[1].strip(), int(parts[2])
        if query_id not in query_ids:
            raise DatasetError(f"{path}:{line_no}: query id {query_id!r} is not in "
                               f"queries.jsonl")
        _add_judgment(qrels, query_id, doc_id, grade, f"{path}:{line_no}")
    return qrels


def _check_tsv_id(value: str, kind: str) -> None:
    if not value or any(c in value for c in "\t\r\n"):
        raise DatasetError(f"{kind} id {value!r} cannot be written to a qrels TSV file: "
                           f"ids must be non-empty without tabs or newlines")


# ---------------------------------------------------------------------------------------
# Cranfield


def load_cranfield(directory: str | Path) -> Collection:
    """Load Cranfield 1400 from `cran.all.1400`, `cran.qry` and `cranqrel` in `directory`."""
    directory = Path(directory)
    paths = [directory / n for n in ("cran.all.1400", "cran.qry", "cranqrel")]
    for path in paths:
        _require_file(path, "the Cranfield collection needs cran.all.1400, cran.qry and "
                            "cranqrel")
    documents = _cranfield_documents(paths[0])
    queries = [Query(str(position), fields.get("W", ""))
               for position, (_, _, fields) in enumerate(_read_smart(paths[1], "W"), 1)]
    qrels = _cranfield_qrels(paths[2], len(queries), {d.id for d in documents})
    judged = [q for q in queries if q.id in qrels]
    return Collection("cranfield", documents, judged, qrels,
                      dropped_queries=len(queries) - len(judged))


def _cranfield_documents(path: Path) -> list[Document]:
    documents, lines = [], []
    for line_no, number, fields in _read_smart(path, "TABW"):
        if not number.isdigit():
            raise DatasetError(f"{path}:{line_no}: expected '.I <number>', got '.I {number}'")
        documents.append(Document(str(int(number)), fields.get("T", ""), fields.get("W", "")))
        lines.append(line_no)
    _check_unique(path, lines, [d.id for d in documents])
    return documents


def _cranfield_qrels(path: Path, n_queries: int, doc_ids: set[str]) -> Qrels:
    qrels: Qrels = {}
    for line_no, line in utf8_lines(path, DatasetError):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise DatasetError(f"{path}:{line_no}: expected 'query doc code' (three "
                               f"integers), got {line.strip()!r}")
        query, doc_id, code = int(parts[0]), str(int(parts[1])), int(parts[2])
        where = f"{path}:{line_no}"
        if not 1 <= query <= n_queries:
            raise DatasetError(f"{where}: query {query} is not a position in cran.qry "
                               f"(1..{n_queries})")
        if doc_id not in doc_ids:
            raise DatasetError(f"{where}: document {doc_id} is not in cran.all.1400")
        if code in _CRANFIELD_NOT_RELEVANT:
            continue
        if code not in _CRANFIELD_GRADES:
            raise DatasetError(f"{where}: relevance code {code} is not one of 1, 2, 3, 4, "
                               f"5 or -1")
        _add_judgment(qrels, str(query), doc_id, _CRANFIELD_GRADES[code], where)
    return qrels


def _read_smart(path: Path, allowed: str) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line of the `.I`, its value, marker letter -> text with whitespace collapsed)."""
    for line_no, number, lines in _smart_records(path):
        fields: dict[str, list[str]] = {}
        letter = None
        for body_no, line in lines:
            marker = _MARKER.match(line)
            if marker and letter == "W":
                continue   # stray marker inside the text (cran.all.1400 docs 240, 576, 578)
            if marker:
                letter = marker.group(1)
                if letter not in allowed:
                    raise DatasetError(f"{path}:{body_no}: unknown field '.{letter}'; "
                                       f"expected one of {', '.join('.' + a for a in allowed)}")
                fields.setdefault(letter, [])
            elif letter is None:
                if line.strip():
                    raise DatasetError(f"{path}:{body_no}: expected a field marker such as "
                                       f"'.{allowed[0]}' after '.I', got {line.strip()!r}")
            else:
                fields[letter].append(line)
        yield line_no, number, {k: " ".join(" ".join(v).split()) for k, v in fields.items()}


def _smart_records(path: Path) -> Iterator[tuple[int, str, list[tuple[int, str]]]]:
    record: tuple[int, str, list[tuple[int, str]]] | None = None
    for line_no, line in utf8_lines(path, DatasetError):
        start = _RECORD.match(line)
        if start:
            if record is not None:
                yield record
            if not start.group(1):
                raise DatasetError(f"{path}:{line_no}: expected '.I <id>', got '.I'")
            record = (line_no, start.group(1), [])
        elif record is not None:
            record[2].append((line_no, line))
        elif line.strip():
            raise DatasetError(f"{path}:{line_no}: expected '.I <id>' to start a record, "
                               f"got {line.strip()!r}")
    if record is not None:
        yield record


# ---------------------------------------------------------------------------------------
# shared checks


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}: {what}")


def _check_unique(path: Path, line_numbers: list[int], ids: list[str]) -> None:
    first_line: dict[str, int] = {}
    for line_no, i in zip(line_numbers, ids):
        if i in first_line:
            raise DatasetError(f"{path}:{line_no}: id {i!r} occurs again (first on line "
                               f"{first_line[i]}); ids must be unique")
        first_line[i] = line_no


def _add_judgment(qrels: Qrels, query_id: str, doc_id: str, grade: int, where: str) -> None:
    judgments = qrels.setdefault(query_id, {})
    if judgments.get(doc_id, grade) != grade:
        raise DatasetError(f"{where}: query {query_id!r} judges document {doc_id!r} again "
                           f"with grade {grade}, earlier {judgments[doc_id]}")
    judgments[doc_id] = grade
