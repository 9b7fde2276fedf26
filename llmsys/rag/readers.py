"""Readers of the RAG pipeline: they turn files, folders and URLs into `SourceDocument`s, text
ready for chunking plus what a citation needs (title, source, page or heading path).

    from llmsys.rag.readers import Skipped, read_path, read_sources, read_url

    skipped: list[Skipped] = []
    for doc in read_sources(["docs/", "paper.pdf", "https://example.com/post"], skipped):
        for chunk in chunker.split(doc.text):
            section = doc.locate(chunk.start)   # Section or None
            cite = (doc.title, doc.doc_id, section.page if section else None)
    for s in skipped:
        print(s.path, s.reason)                 # files a folder walk could not read

A `SourceDocument` has a stable, content-independent `doc_id` (for a file its path relative to
the ingestion root, posix style; for a URL the final URL after redirects; for a BEIR JSONL line
its `_id`), its `text`, a `title` (or None), its `source` (absolute file path or final URL),
`metadata` (always `format`: "text", "markdown", "html", "pdf" or "beir", plus per-format
facts) and `sections`: sorted, non-overlapping character ranges of `text` with their heading
path or PDF page. `locate(offset)` gives the section holding a character (e.g. a chunk's
start), and `content_hash` the sha256 of the text, so a store can tell a changed document.

Readers, chosen by file suffix (case-insensitive):

- `.txt` and any other file whose content is UTF-8 text: the text as is, no sections.
- `.md`, `.markdown`: title from the first `# ` heading; one section per ATX heading (`#` ..
  `######`, not inside ``` or ~~~ fences) running to the next heading, with the heading path
  (e.g. ("Guide", "Install")); text before the first heading is a section with no headings.
  A document without headings has no sections.
- `.html`, `.htm`: the main content as Markdown through trafilatura (script, style, navigation
  and boilerplate dropped), or all visible text when trafilatura finds no main content; title
  from `<title>` (else the first `# ` heading); sections from the Markdown headings.
- `.pdf` (pypdf): each page's extracted text, pages joined with "\\n\\n"; one section per page
  with text (`page` counts from 1; pages without text are left out but keep their number).
  A PDF with no extractable text at all (a scan) or one that needs a password is an error.
- `.jsonl`: a BEIR corpus, one JSON object per line with `_id`, `text` and optional `title`;
  one document per line. A malformed line is an error naming the file and line.

Text is decoded as UTF-8 (a BOM is dropped) and line breaks are normalised to "\\n"; HTML uses
the charset of its `<meta>` tag when it has one. `read_path` reads a file or walks a folder:
recursively, in sorted order of relative path, skipping hidden files and folders (names
starting with ".") silently, and skipping files it cannot read (binary content, not UTF-8,
a PDF without text, a malformed JSONL file, no permission, not a regular file) with a logged
warning and, when a list is passed as `skipped`, a `Skipped(path, reason)` appended to it.
A file given explicitly is never skipped: any problem raises `ReaderError`, naming the path.
A file is read whole before its documents are yielded, so a bad file yields nothing.

`read_url` fetches a page with `llmsys.agent.web.fetch` (redirects, size and time limits,
optional private-network blocking) and picks the reader by the response's Content-Type: HTML
as above, text/markdown (or text/plain at a `.md`/`.markdown` path) as Markdown, other text
and JSON as plain text. `read_sources` takes a mix of paths and http(s) URLs, checks them all
before reading any, and warns when two documents share a `doc_id`.

Limits: PDF and other binary URLs cannot be read (`fetch` refuses them): download the file
and read the path. Every `.jsonl` file is taken for a BEIR corpus (point `read_path` at
`corpus.jsonl`, not at a BEIR folder, whose `queries.jsonl` would be read as documents too),
and its ids are not prefixed, so they may clash with ids from other sources. A JSONL file is
held in memory whole. Symlinked folders are not followed in a walk; symlinked files are read.
Setext headings (underlined with === or ---) do not make sections. PDF text is only as good as
pypdf's extraction (no OCR; columns and tables may come out in odd order).
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from llmsys.agent.web import HTML_TYPES, FetchConfig, FetchError, check_url, fetch, html_to_text
from llmsys.rag.chunking import markdown_headings

__all__ = ["READERS", "READ_URL_CONFIG", "ReaderError", "Section", "Skipped", "SourceDocument",
           "markdown_sections", "read_path", "read_sources", "read_url"]

logger = logging.getLogger(__name__)

# A document, not an agent observation: allow long pages (the agent's default keeps 20,000
# characters), but keep fetch's other limits.
READ_URL_CONFIG = FetchConfig(total_timeout=60, max_bytes=20 * 2**20, max_chars=10_000_000)

_SNIFF_BYTES = 8192
_MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
_MARKDOWN_SUFFIXES = (".md", ".markdown")


class ReaderError(ValueError):
    """A source that cannot be read; the message names the path or URL and the problem."""


# ----------------------------------------------------------------------------- documents

@dataclass(frozen=True)
class Section:
    """Characters `text[start:end]` of a document, under a heading path or on a PDF page."""

    start: int
    end: int
    headings: tuple[str, ...] = ()
    page: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"Section needs 0 <= start <= end, got start={self.start}, "
                             f"end={self.end}")


@dataclass(frozen=True)
class SourceDocument:
    """A document ready for chunking; see the module docstring for what each field holds."""

    doc_id: str
    text: str
    title: str | None
    source: str
    metadata: dict[str, Any]
    sections: tuple[Section, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise ValueError(f"doc_id must be a non-empty string, got {self.doc_id!r}")
        end = 0
        for section in self.sections:
            if section.start < end or section.end > len(self.text):
                raise ValueError(f"sections of {self.doc_id!r} must be sorted, must not overlap "
                                 f"and must lie within the text ({len(self.text)} characters); "
                                 f"got {section}")
            end = section.end

    @cached_property
    def content_hash(self) -> str:
        """sha256 (hex) of the UTF-8 text: equal for equal text, whatever the id or source."""
        return hashlib.sha256(self.text.encode("utf-8", errors="surrogatepass")).hexdigest()

    @cached_property
    def _starts(self) -> list[int]:
        return [section.start for section in self.sections]

    def locate(self, offset: int) -> Section | None:
        """The section holding character `offset` of the text, or None if none does."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and self.sections[i].start <= offset < self.sections[i].end:
            return self.sections[i]
        return None


@dataclass(frozen=True)
class Skipped:
    """A file a folder walk left out, and why."""

    path: str
    reason: str


# ----------------------------------------------------------------------------- markdown

@dataclass(frozen=True)
class _Heading:
    start: int
    level: int
    title: str


def _headings(text: str) -> list[_Heading]:
    """ATX headings outside fenced code blocks, in order (the chunkers' Markdown scanner)."""
    return [_Heading(*h) for h in markdown_headings(text)]


def markdown_sections(text: str) -> tuple[Section, ...]:
    """One section per heading, to the next heading, with its heading path; text before the
    first heading (unless blank) is a section without headings. No headings: no sections."""
    headings = _headings(text)
    if not headings:
        return ()
    sections = []
    if text[:headings[0].start].strip():
        sections.append(Section(0, headings[0].start))
    path: list[_Heading] = []
    ends = [h.start for h in headings[1:]] + [len(text)]
    for heading, end in zip(headings, ends, strict=True):
        while path and path[-1].level >= heading.level:
            path.pop()
        path.append(heading)
        sections.append(Section(heading.start, end, tuple(h.title for h in path)))
    return tuple(sections)


def _first_title(text: str) -> str | None:
    return next((h.title for h in _headings(text) if h.level == 1 and h.title), None)


def _markdown_document(doc_id: str, text: str, source: str, metadata: dict[str, Any],
                       title: str | None = None) -> SourceDocument:
    return SourceDocument(doc_id, text, title or _first_title(text), source, metadata,
                          markdown_sections(text))


# ----------------------------------------------------------------------------- file readers

@dataclass(frozen=True)
class _File:
    """A file's bytes with the id and source its documents get."""

    path: Path
    doc_id: str
    data: bytes

    @property
    def source(self) -> str:
        return str(self.path.absolute())


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _utf8(file: _File) -> str:
    """The file's text; ReaderError if it is binary or not UTF-8."""
    if b"\0" in file.data[:_SNIFF_BYTES]:
        raise ReaderError(f"{file.path}: binary file (NUL bytes), not text")
    try:
        return _normalise(file.data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ReaderError(f"{file.path}: not UTF-8 text (invalid byte at offset {e.start})"
                          ) from None


def _read_text(file: _File) -> list[SourceDocument]:
    return [SourceDocument(file.doc_id, _utf8(file), None, file.source, {"format": "text"})]


def _read_markdown(file: _File) -> list[SourceDocument]:
    return [_markdown_document(file.doc_id, _utf8(file), file.source, {"format": "markdown"})]


_META_CHARSET = re.compile(rb"<meta[^>]*charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)


def _html_text(file: _File) -> str:
    if b"\0" in file.data[:_SNIFF_BYTES]:
        raise ReaderError(f"{file.path}: binary file (NUL bytes), not HTML")
    if file.data.startswith(b"\xef\xbb\xbf"):
        return file.data[3:].decode("utf-8", errors="replace")
    declared = _META_CHARSET.search(file.data[:4096])
    try:
        return file.data.decode(declared.group(1).decode() if declared else "utf-8",
                                errors="replace")
    except LookupError:  # a charset Python does not know
        return file.data.decode("utf-8", errors="replace")


def _read_html(file: _File) -> list[SourceDocument]:
    title, markdown = html_to_text(_html_text(file))
    return [_markdown_document(file.doc_id, _normalise(markdown), file.source,
                               {"format": "html"}, title)]


def _read_pdf(file: _File) -> list[SourceDocument]:
    reader = _open_pdf(file)
    pages = _pages(file, reader)
    parts: list[str] = []
    sections: list[Section] = []
    start = 0
    for number, page in enumerate(pages, 1):
        text = _page_text(file, page, number).strip()
        if not text:
            continue
        if parts:
            start += 2  # the "\n\n" between pages
        parts.append(text)
        sections.append(Section(start, start + len(text), page=number))
        start += len(text)
    if not parts:
        raise ReaderError(f"{file.path}: no extractable text in its {len(pages)} "
                          "page(s) (a scanned PDF? run OCR on it first)")
    metadata = {"format": "pdf", "pages": len(pages)}
    return [SourceDocument(file.doc_id, "\n\n".join(parts), _pdf_title(reader), file.source,
                           metadata, tuple(sections))]


def _open_pdf(file: _File) -> Any:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(file.data))
        locked = reader.is_encrypted and reader.decrypt("") == 0
    except DependencyError as e:
        raise ReaderError(f"{file.path}: encrypted PDF that pypdf cannot decrypt ({e})"
                          ) from None
    except (PyPdfError, ValueError, KeyError, TypeError) as e:
        raise ReaderError(f"{file.path}: unreadable PDF ({type(e).__name__}: {e})") from None
    if locked:
        raise ReaderError(f"{file.path}: encrypted PDF that needs a password; save a "
                          "decrypted copy and read that")
    return reader


def _pages(file: _File, reader: Any) -> list[Any]:
    """The PDF's pages (its page tree is parsed here: a broken one is a ReaderError)."""
    from pypdf.errors import PyPdfError

    try:
        return list(reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ReaderError(f"{file.path}: unreadable PDF page tree ({type(e).__name__}: {e})"
                          ) from None


def _pdf_title(reader: Any) -> str | None:
    """The title in the PDF's document information, if any (a broken one counts as none)."""
    from pypdf.errors import PyPdfError

    try:
        title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(title, str):
        return None
    return " ".join(title.split()) or None


def _page_text(file: _File, page: Any, number: int) -> str:
    from pypdf.errors import PyPdfError

    try:
        return _normalise(page.extract_text() or "")
    except (PyPdfError, ValueError, KeyError, TypeError) as e:
        raise ReaderError(f"{file.path}: cannot extract the text of page {number} "
                          f"({type(e).__name__}: {e})") from None


def _read_beir(file: _File) -> list[SourceDocument]:
    documents: list[SourceDocument] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(_utf8(file).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{file.path}:{line_no}"
        doc_id, title, text = _beir_record(where, line)
        if doc_id in first_line:
            raise ReaderError(f"{where}: _id {doc_id!r} occurs again (first on line "
                              f"{first_line[doc_id]})")
        first_line[doc_id] = line_no
        documents.append(SourceDocument(doc_id, text, title or None, file.source,
                                        {"format": "beir", "line": line_no}))
    return documents


def _beir_record(where: str, line: str) -> tuple[str, str | None, str]:
    """(_id, title, text) of one BEIR corpus line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ReaderError(f"{where}: expected one JSON object per line ({e.msg})") from None
    if not isinstance(record, dict):
        raise ReaderError(f"{where}: expected a JSON object, got {type(record).__name__}")
    doc_id, title, text = record.get("_id"), record.get("title"), record.get("text")
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        raise ReaderError(f"{where}: expected a non-empty string '_id', got {doc_id!r}")
    if not isinstance(text, str):
        raise ReaderError(f"{where}: expected a string 'text', got {text!r}")
    if title is not None and not isinstance(title, str):
        raise ReaderError(f"{where}: expected a string 'title' (or none), got {title!r}")
    return str(doc_id), title, text


Reader = Callable[[_File], list[SourceDocument]]

READERS: dict[str, Reader] = {
    ".txt": _read_text, ".md": _read_markdown, ".markdown": _read_markdown,
    ".html": _read_html, ".htm": _read_html, ".pdf": _read_pdf, ".jsonl": _read_beir,
}
_SUPPORTED = ", ".join(READERS) + " and other UTF-8 text files"


# ----------------------------------------------------------------------------- paths

def read_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
              skipped: list[Skipped] | None = None) -> Iterator[SourceDocument]:
    """The documents of a file, or of every readable file under a folder (see the module
    docstring). Ids are paths relative to `root`: by default the folder itself, or a file's
    own folder. Files a walk cannot read are logged and appended to `skipped`."""
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"{path}: no such file or directory")
    base = Path(root) if root is not None else (path if path.is_dir() else path.parent)
    _relative_id(path, base)  # fail now, not on the first document, if path is outside root
    if path.is_dir():
        return _read_folder(path, base, skipped)
    if not path.is_file():
        raise ReaderError(f"{path}: not a regular file or folder")
    return iter(_read_file(path, _relative_id(path, base)))


def _relative_id(path: Path, root: Path) -> str:
    try:
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise ReaderError(f"{path}: not inside the root folder {root}") from None
    return relative.as_posix() if relative.parts else path.absolute().name


def _read_file(path: Path, doc_id: str) -> list[SourceDocument]:
    reader = READERS.get(path.suffix.lower())
    try:
        if reader is None:
            with path.open("rb") as f:
                head = f.read(_SNIFF_BYTES)
            reader = _sniff_reader(path, head)
        data = path.read_bytes()
    except OSError as e:
        raise ReaderError(f"{path}: cannot read it ({e.strerror or e})") from None
    return reader(_File(path, doc_id, data))


def _sniff_reader(path: Path, head: bytes) -> Reader:
    """The plain-text reader for a file of unknown type whose start looks like UTF-8 text."""
    problem = "binary content (NUL bytes)" if b"\0" in head else None
    if problem is None:
        try:  # not final: the head may end inside a character
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            problem = "content that is not UTF-8 text"
    if problem is None:
        return _read_text
    raise ReaderError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} with "
                      f"{problem}; supported: {_SUPPORTED}")


def _read_folder(folder: Path, root: Path,
                 skipped: list[Skipped] | None) -> Iterator[SourceDocument]:
    for path in _walk(folder, root, skipped):
        if not path.is_file():
            _skip(skipped, path, "not a regular file (or a broken link)")
            continue
        try:
            documents = _read_file(path, _relative_id(path, root))
        except ReaderError as e:
            _skip(skipped, path, str(e).removeprefix(f"{path}: "))
            continue
        yield from documents


def _walk(folder: Path, root: Path, skipped: list[Skipped] | None) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by its path relative to `root`."""
    def unreadable(error: OSError) -> None:
        _skip(skipped, Path(error.filename or folder), f"cannot list folder ({error.strerror})")

    files = []
    for directory, folders, names in os.walk(folder, onerror=unreadable):
        folders[:] = [name for name in folders if not name.startswith(".")]
        files += [Path(directory, name) for name in names if not name.startswith(".")]
    return sorted(files, key=lambda p: _relative_id(p, root))


def _skip(skipped: list[Skipped] | None, path: Path, reason: str) -> None:
    logger.warning("skipped %s: %s", path, reason)
    if skipped is not None:
        skipped.append(Skipped(str(path), reason))


# ----------------------------------------------------------------------------- URLs

def read_url(url: str, config: FetchConfig = READ_URL_CONFIG) -> SourceDocument:
    """The page at `url` as a document whose id is the final URL (after redirects)."""
    try:
        result = fetch(url, config)
    except FetchError as e:
        raise ReaderError(str(e)) from None
    metadata: dict[str, Any] = {
        "format": "html" if result.content_type in HTML_TYPES else "text",
        "content_type": result.content_type, "requested_url": url,
        "redirects": list(result.redirects), "truncated": result.truncated}
    if result.truncated:
        logger.warning("%s is longer than the fetch limits (max_bytes=%d, max_chars=%d); "
                       "the document is cut", result.url, config.max_bytes, config.max_chars)
    text = _normalise(result.text)
    if metadata["format"] == "html" or _is_markdown(result.content_type, result.url):
        if metadata["format"] == "text":
            metadata["format"] = "markdown"
        return _markdown_document(result.url, text, result.url, metadata, result.title)
    return SourceDocument(result.url, text, result.title, result.url, metadata)


def _is_markdown(content_type: str, url: str) -> bool:
    if content_type in _MARKDOWN_TYPES:
        return True
    path = url.split("#")[0].split("?")[0].lower()
    return content_type == "text/plain" and path.endswith(_MARKDOWN_SUFFIXES)


def read_sources(sources: list[str],
                 skipped: list[Skipped] | None = None) -> Iterator[SourceDocument]:
    """The documents of each source in order: http(s) URLs through `read_url`, anything else
    through `read_path` (each path is its own root). Every source is checked before any is
    read; a source that fails raises, files skipped in folder walks go to `skipped`."""
    if isinstance(sources, str | bytes) or not all(isinstance(s, str) for s in sources):
        raise ReaderError(f"sources must be a list of paths and URLs (strings), got "
                          f"{sources!r}")
    for source in sources:
        _check_source(source)
    return _read_sources(list(sources), skipped)


def _is_url(source: str) -> bool:
    return re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", source.strip()) is not None


def _check_source(source: str) -> None:
    if _is_url(source):
        try:
            check_url(source)
        except FetchError as e:
            raise ReaderError(str(e)) from None
    elif not Path(source).exists():
        raise ReaderError(f"{source}: no such file or directory (nor an http(s) URL)")


def _read_sources(sources: list[str], skipped: list[Skipped] | None) -> Iterator[SourceDocument]:
    seen: dict[str, str] = {}
    for source in sources:
        documents = [read_url(source)] if _is_url(source) else read_path(source, None, skipped)
        for document in documents:
            if document.doc_id in seen:
                logger.warning("doc_id %r from %s was already given by %s", document.doc_id,
                               source, seen[document.doc_id])
            seen.setdefault(document.doc_id, source)
            yield document
