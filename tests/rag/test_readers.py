"""Tests for llmsys.rag.readers: real files in tmp_path (Markdown, HTML, a hand-written PDF,
BEIR JSONL, a folder tree) and a real local HTTP server for URLs."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmsys.rag.readers import (
    ReaderError,
    Section,
    Skipped,
    SourceDocument,
    markdown_sections,
    read_path,
    read_sources,
    read_url,
)

MARKDOWN = """Intro line before any heading.

# User Guide

Welcome to the guide.

## Install

Run the installer.

```
# not a heading inside a fence
```

### From source

Clone and build.

## Usage

Call the tool.
"""

ARTICLE = """<!doctype html><html><head><title>Garden Notes</title>
<script>var junk = "SCRIPTJUNK";</script><style>body { color: red }</style></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">NAVJUNK About us</a></li></ul></nav>
<article><h1>Gardening Guide</h1>
<p>Tomatoes need plenty of sunlight and regular watering to grow well in summer gardens.</p>
<h2>Soil</h2>
<p>Use rich, well-drained soil with plenty of compost mixed in before planting the seedlings.</p>
<h3>Compost</h3>
<p>Compost improves soil structure and feeds the plants slowly over the whole season.</p>
<h2>Watering</h2>
<p>Water deeply twice a week rather than a little every day, so that the roots grow down.</p>
</article><footer>Copyright FOOTERJUNK</footer>
<script>document.write("MORESCRIPTJUNK")</script></body></html>"""


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text line per page, with a correct xref table."""
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
                       f"<< /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    info = f" /Info {len(objects)} 0 R" if title is not None else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\n".encode()
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def only(documents: Iterator[SourceDocument]) -> SourceDocument:
    docs = list(documents)
    assert len(docs) == 1, docs
    return docs[0]


# ----------------------------------------------------------------------------- documents

def test_locate_and_content_hash() -> None:
    sections = (Section(0, 5, ("A",)), Section(7, 10, page=2))
    doc = SourceDocument("d", "hello\n\nabc", None, "src", {}, sections)
    assert doc.locate(0) == sections[0] and doc.locate(4) == sections[0]
    assert doc.locate(5) is None and doc.locate(6) is None     # the gap between them
    assert doc.locate(9) == sections[1] and doc.locate(10) is None and doc.locate(-1) is None
    assert doc.content_hash == hashlib.sha256(b"hello\n\nabc").hexdigest()
    other = SourceDocument("other-id", "hello\n\nabc", "T", "elsewhere", {"x": 1})
    assert other.content_hash == doc.content_hash
    assert SourceDocument("d", "changed", None, "src", {}).content_hash != doc.content_hash
    with pytest.raises(ValueError, match="must not overlap"):
        SourceDocument("d", "hello", None, "src", {}, (Section(0, 3), Section(2, 4)))
    with pytest.raises(ValueError, match="within the text"):
        SourceDocument("d", "hello", None, "src", {}, (Section(0, 9),))
    with pytest.raises(ValueError, match="start <= end"):
        Section(3, 2)


# ----------------------------------------------------------------------------- markdown

def test_markdown_title_sections_and_locate(tmp_path: Path) -> None:
    write(tmp_path / "guide.md", MARKDOWN.replace("\n", "\r\n"))   # CRLF is normalised
    doc = only(read_path(tmp_path / "guide.md"))
    assert (doc.doc_id, doc.title, doc.text) == ("guide.md", "User Guide", MARKDOWN)
    assert doc.source == str((tmp_path / "guide.md").absolute())
    assert doc.metadata == {"format": "markdown"}
    assert [s.headings for s in doc.sections] == [
        (), ("User Guide",), ("User Guide", "Install"), ("User Guide", "Install", "From source"),
        ("User Guide", "Usage")]
    assert doc.sections[0].start == 0 and doc.sections[-1].end == len(doc.text)
    for before, after in zip(doc.sections, doc.sections[1:], strict=False):
        assert before.end == after.start                      # contiguous
    assert all(doc.text[s.start:].startswith("#") for s in doc.sections[1:])
    assert doc.locate(doc.text.index("Clone")).headings[-1] == "From source"
    assert doc.locate(doc.text.index("# not a heading")).headings[-1] == "Install"
    assert doc.locate(doc.text.index("Intro")).headings == ()
    assert doc.locate(doc.text.index("Call the tool")).page is None


def test_markdown_without_headings_has_no_sections(tmp_path: Path) -> None:
    write(tmp_path / "notes.markdown", "just text\n\n####### seven hashes is no heading\n")
    doc = only(read_path(tmp_path / "notes.markdown"))
    assert doc.title is None and doc.sections == () and doc.locate(0) is None
    assert markdown_sections("## Only level two ##\nbody") == (
        Section(0, len("## Only level two ##\nbody"), ("Only level two",)),)


# ----------------------------------------------------------------------------- HTML

def test_html_article(tmp_path: Path) -> None:
    write(tmp_path / "page.HTML", ARTICLE)
    doc = only(read_path(tmp_path / "page.HTML"))
    assert doc.title == "Garden Notes" and doc.metadata["format"] == "html"
    assert "Tomatoes need plenty of sunlight" in doc.text
    for junk in ("SCRIPTJUNK", "MORESCRIPTJUNK", "color: red", "NAVJUNK", "FOOTERJUNK"):
        assert junk not in doc.text
    section = doc.locate(doc.text.index("Compost improves"))
    assert section is not None and section.headings == ("Gardening Guide", "Soil", "Compost")
    assert doc.locate(doc.text.index("Water deeply")).headings == ("Gardening Guide",
                                                                    "Watering")


def test_html_fallback_and_charset(tmp_path: Path) -> None:
    html = ("<html><head><meta charset='iso-8859-1'><title>Caf\xe9</title></head><body>"
            "<script>x()</script><p>Cr\xe8me br\xfbl\xe9e</p></body></html>")
    write(tmp_path / "tiny.htm", html.encode("iso-8859-1"))
    doc = only(read_path(tmp_path / "tiny.htm"))
    assert doc.title == "Café" and "Crème brûlée" in doc.text and "x()" not in doc.text


# ----------------------------------------------------------------------------- PDF

def test_pdf_pages_sections_and_locate(tmp_path: Path) -> None:
    write(tmp_path / "paper.pdf", make_pdf(["Hello page one", "Second page text"], "My Paper"))
    doc = only(read_path(tmp_path / "paper.pdf"))
    assert doc.text == "Hello page one\n\nSecond page text"
    assert (doc.title, doc.metadata) == ("My Paper", {"format": "pdf", "pages": 2})
    assert doc.sections == (Section(0, 14, page=1), Section(16, 32, page=2))
    assert doc.locate(doc.text.index("page one")).page == 1
    assert doc.locate(doc.text.index("text")).page == 2
    assert doc.locate(15) is None                      # the blank line between pages


def test_pdf_with_a_broken_page_tree_is_skipped_in_a_walk(tmp_path: Path) -> None:
    broken = make_pdf(["Hello page one"]).replace(b"/Kids [4 0 R]", b"/Kids (4 0 R)")
    write(tmp_path / "broken.pdf", broken)
    write(tmp_path / "notes.txt", "plain notes\n")
    skipped: list[Skipped] = []
    assert [d.doc_id for d in read_path(tmp_path, skipped=skipped)] == ["notes.txt"]
    assert [s.path for s in skipped] == [str(tmp_path / "broken.pdf")]
    assert "unreadable PDF page tree" in skipped[0].reason
    with pytest.raises(ReaderError, match=r"broken\.pdf: unreadable PDF page tree"):
        list(read_path(tmp_path / "broken.pdf"))


def test_pdf_blank_page_keeps_numbering_and_errors(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    for page in PdfReader(io.BytesIO(make_pdf(["Only text here"]))).pages:
        writer.add_page(page)
    buffer = io.BytesIO()
    writer.write(buffer)
    write(tmp_path / "gap.pdf", buffer.getvalue())
    doc = only(read_path(tmp_path / "gap.pdf"))
    assert doc.text == "Only text here" and doc.sections == (Section(0, 14, page=2),)
    assert doc.title is None

    blank = PdfWriter()
    blank.add_blank_page(612, 792)
    buffer = io.BytesIO()
    blank.write(buffer)
    write(tmp_path / "scan.pdf", buffer.getvalue())
    with pytest.raises(ReaderError, match=r"scan\.pdf: no extractable text in its 1 page"):
        list(read_path(tmp_path / "scan.pdf"))

    locked = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Secret text"]))))
    locked.encrypt("password", algorithm="RC4-128")
    buffer = io.BytesIO()
    locked.write(buffer)
    write(tmp_path / "locked.pdf", buffer.getvalue())
    with pytest.raises(ReaderError, match=r"locked\.pdf: encrypted PDF"):
        list(read_path(tmp_path / "locked.pdf"))

    write(tmp_path / "broken.pdf", b"%PDF-1.4\nthis is not a pdf at all")
    with pytest.raises(ReaderError, match=r"broken\.pdf: unreadable PDF"):
        list(read_path(tmp_path / "broken.pdf"))


# ----------------------------------------------------------------------------- BEIR JSONL

def test_beir_jsonl(tmp_path: Path) -> None:
    lines = [{"_id": "d1", "title": "First", "text": "Alpha text."},
             {"_id": 42, "title": "", "text": "Beta text."},
             {"_id": "d3", "text": "No title."}]
    write(tmp_path / "corpus.jsonl", "\n".join(map(json.dumps, lines)) + "\n\n")
    docs = list(read_path(tmp_path / "corpus.jsonl"))
    assert [(d.doc_id, d.title, d.text) for d in docs] == [
        ("d1", "First", "Alpha text."), ("42", None, "Beta text."), ("d3", None, "No title.")]
    assert docs[1].metadata == {"format": "beir", "line": 2}
    assert docs[0].source == str((tmp_path / "corpus.jsonl").absolute())


@pytest.mark.parametrize(("line", "problem"), [
    ('{"_id": "x", "text": "ok"', "expected one JSON object per line"),
    ('["_id", "x"]', "expected a JSON object, got list"),
    ('{"text": "no id"}', "expected a non-empty string '_id'"),
    ('{"_id": "x", "text": 3}', "expected a string 'text'"),
    ('{"_id": "d1", "text": "again"}', "_id 'd1' occurs again \\(first on line 1\\)"),
])
def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, line: str,
                                                  problem: str) -> None:
    path = write(tmp_path / "bad.jsonl", '{"_id": "d1", "text": "fine"}\n' + line + "\n")
    with pytest.raises(ReaderError, match=rf"bad\.jsonl:2: {problem}"):
        list(read_path(path))


# ----------------------------------------------------------------------------- folders

def test_folder_walk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "kb"
    write(root / "b.txt", "plain b")
    write(root / "a" / "z.md", "# Zed\n\nzed text")
    write(root / "a" / "deeper" / "page.html", ARTICLE)
    write(root / "a.txt", "plain a")
    write(root / "NOTES", "unknown suffix but UTF-8 text")
    write(root / "docs" / "paper.pdf", make_pdf(["Hello page one", "Second page text"]))
    write(root / ".hidden.md", "# Hidden")
    write(root / ".git" / "config.txt", "hidden folder")
    write(root / "image.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    write(root / "latin.txt", "caf\xe9".encode("latin-1"))
    write(root / "bad.jsonl", "not json\n")
    skipped: list[Skipped] = []
    with caplog.at_level(logging.WARNING, logger="llmsys.rag.readers"):
        docs = list(read_path(root, skipped=skipped))
    assert [d.doc_id for d in docs] == ["NOTES", "a.txt", "a/deeper/page.html", "a/z.md",
                                        "b.txt", "docs/paper.pdf"]
    assert [d.metadata["format"] for d in docs] == ["text", "text", "html", "markdown", "text",
                                                    "pdf"]
    assert docs[3].title == "Zed" and docs[5].locate(20).page == 2
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {"bad.jsonl", "image.png", "latin.txt"}
    assert "binary content" in reasons["image.png"] and "'.png'" in reasons["image.png"]
    assert "not UTF-8 text" in reasons["latin.txt"]
    assert "bad.jsonl:1: expected one JSON object" in reasons["bad.jsonl"]
    assert sum("skipped" in r.message for r in caplog.records) == 3


def test_root_gives_relative_ids(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "sub" / "one.txt", "one")
    assert only(read_path(tmp_path / "kb" / "sub", root=tmp_path)).doc_id == "kb/sub/one.txt"
    assert only(read_path(tmp_path / "kb" / "sub" / "one.txt", root=tmp_path / "kb")
                ).doc_id == "sub/one.txt"
    with pytest.raises(ReaderError, match="not inside the root folder"):
        read_path(tmp_path / "kb", root=tmp_path / "kb" / "sub")


# ----------------------------------------------------------------------------- errors

def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match=r"missing\.md: no such file or directory"):
        read_path(tmp_path / "missing.md")            # raised at the call, not on iteration
    write(tmp_path / "photo.jpg", b"\xff\xd8\xff\xe0\0\x10JFIF\0")
    with pytest.raises(ReaderError, match=r"photo\.jpg: unsupported file type '\.jpg'.*"
                                          r"supported: \.txt, \.md"):
        list(read_path(tmp_path / "photo.jpg"))
    write(tmp_path / "latin.txt", "caf\xe9".encode("latin-1"))
    with pytest.raises(ReaderError, match=r"latin\.txt: not UTF-8 text \(invalid byte at "
                                          r"offset 3\)"):
        list(read_path(tmp_path / "latin.txt"))
    with pytest.raises(ReaderError, match="no such file or directory"):
        read_sources([str(tmp_path / "photo.jpg"), str(tmp_path / "nope")])
    with pytest.raises(ReaderError, match="only http:// and https://"):
        read_sources(["ftp://example.com/file.txt"])
    with pytest.raises(ReaderError, match="must be a list"):
        read_sources(str(tmp_path))                   # type: ignore[arg-type]


# ----------------------------------------------------------------------------- URLs

PAGES = {
    "/article": ("text/html; charset=utf-8", ARTICLE),
    "/notes.txt": ("text/plain; charset=utf-8", "Plain notes.\r\nSecond line."),
    "/readme.md": ("text/plain", "# Readme\n\n## Part\n\nBody."),
    "/data.bin": ("application/octet-stream", "\0\0"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/old":
            self.send_response(301)
            self.send_header("Location", "/article")
            self.end_headers()
            return
        if self.path not in PAGES:
            self.send_error(404)
            return
        content_type, body = PAGES[self.path]
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_read_url_html_follows_redirects(server: str) -> None:
    doc = read_url(f"{server}/old")
    assert doc.doc_id == doc.source == f"{server}/article"          # the final URL
    assert doc.title == "Garden Notes" and "SCRIPTJUNK" not in doc.text
    assert doc.metadata["format"] == "html" and doc.metadata["redirects"] == [f"{server}/old"]
    assert doc.metadata["requested_url"] == f"{server}/old" and not doc.metadata["truncated"]
    assert doc.locate(doc.text.index("Compost improves")).headings[-1] == "Compost"


def test_read_url_text_and_markdown(server: str) -> None:
    doc = read_url(f"{server}/notes.txt")
    assert (doc.doc_id, doc.text, doc.title, doc.sections) == (
        f"{server}/notes.txt", "Plain notes.\nSecond line.", None, ())
    assert doc.metadata["format"] == "text" and doc.metadata["content_type"] == "text/plain"
    md = read_url(f"{server}/readme.md")
    assert md.metadata["format"] == "markdown" and md.title == "Readme"
    assert md.locate(md.text.index("Body")).headings == ("Readme", "Part")


def test_read_url_errors(server: str) -> None:
    with pytest.raises(ReaderError, match="unsupported content type 'application/octet-stream'"):
        read_url(f"{server}/data.bin")
    with pytest.raises(ReaderError, match="answered HTTP 404"):
        read_url(f"{server}/missing")


def test_read_sources_mixes_paths_and_urls(tmp_path: Path, server: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "kb" / "a.txt", "a")
    write(tmp_path / "kb" / "blob.dat", b"\0\1\2")
    write(tmp_path / "other" / "a.txt", "another a")
    skipped: list[Skipped] = []
    with caplog.at_level(logging.WARNING, logger="llmsys.rag.readers"):
        docs = list(read_sources([str(tmp_path / "kb"), f"{server}/notes.txt",
                                  str(tmp_path / "other" / "a.txt")], skipped))
    assert [d.doc_id for d in docs] == ["a.txt", f"{server}/notes.txt", "a.txt"]
    assert [Path(s.path).name for s in skipped] == ["blob.dat"]
    assert any("doc_id 'a.txt'" in r.message for r in caplog.records)
