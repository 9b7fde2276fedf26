"""Tests of the ingestion driver (llmsys.rag.ingest) on real folders and a real store file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmsys.rag.chunking import RecursiveChunker
from llmsys.rag.ingest import chunk_document, ingest
from llmsys.rag.readers import ReaderError, read_path
from llmsys.rag.store import Store


class CountingEmbedder:
    """Hashed bag of words, unit rows; records every embed call."""

    name = "counting-test"
    dim = 16

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        rows = np.full((len(texts), self.dim), 0.01, dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i, sum(map(ord, word)) % self.dim] += 1.0
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


GUIDE = """# Guide

Intro words about the guide.

## Install

Run the installer and wait.

## Use

Call the tool with a file.
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text(GUIDE)
    for i in range(12):
        (root / "sub" / f"note{i:02d}.txt").write_text(f"Note {i} says hello world {i}.\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    return root


def ids_and_texts(store: Store) -> list[tuple[str, str, str]]:
    return sorted((c.doc_id, c.chunk_id, c.text)
                  for d in store.documents() for c in store.chunks_of(d.doc_id))


def test_ingest_a_folder_is_idempotent_and_batched(tmp_path: Path, corpus: Path) -> None:
    embedder = CountingEmbedder()
    chunker = RecursiveChunker(max_tokens=12)
    with Store(tmp_path / "rag.db", embedder) as store:
        report = ingest(store, [str(corpus)], chunker, progress=False, batch_chunks=8)
        assert report.documents == 13 and report.written == 13 and report.unchanged == 0
        assert [s.path for s in report.skipped] == [str(corpus / "blob.bin")]
        assert report.chunks_added == store.count() > 13
        assert report.chunks_per_s > 0 and "13 documents: 13 written" in report.summary()
        # every group of documents is embedded in one call, not one call per document
        assert len(embedder.calls) < 13 and sum(embedder.calls) == store.count()
        assert store.check().ok
        before = ids_and_texts(store)
        calls = len(embedder.calls)
        again = ingest(store, [str(corpus)], chunker, progress=False, batch_chunks=8)
        assert (again.written, again.unchanged, again.chunks_added) == (0, 13, 0)
        assert len(embedder.calls) == calls                     # nothing embedded again
        assert ids_and_texts(store) == before


def test_chunks_carry_headings_and_offsets(tmp_path: Path, corpus: Path) -> None:
    document = next(read_path(corpus / "guide.md"))
    chunks = chunk_document(document, RecursiveChunker(max_tokens=8))
    assert {tuple(c.metadata["headings"]) for c in chunks} == {
        ("Guide",), ("Guide", "Install"), ("Guide", "Use")}
    for chunk in chunks:
        assert document.text[chunk.start:chunk.end] == chunk.text


def test_changed_file_replaces_its_chunks_and_prune_removes_deleted(
        tmp_path: Path, corpus: Path) -> None:
    chunker = RecursiveChunker(max_tokens=12)
    with Store(tmp_path / "rag.db", CountingEmbedder()) as store:
        ingest(store, [str(corpus)], chunker, progress=False)
        old_guide = {c.chunk_id for c in store.chunks_of("guide.md")}
        (corpus / "guide.md").write_text(GUIDE.replace("Call the tool", "Invoke the program"))
        (corpus / "sub" / "note03.txt").unlink()
        report = ingest(store, [str(corpus)], chunker, progress=False)
        assert (report.written, report.unchanged, report.pruned) == (1, 11, 0)
        new_guide = {c.chunk_id for c in store.chunks_of("guide.md")}
        assert new_guide != old_guide and len(new_guide & old_guide) >= 2  # unchanged kept
        assert "Invoke the program" in " ".join(c.text for c in store.chunks_of("guide.md"))
        assert store.chunks_of("sub/note03.txt")                 # still there without prune
        pruned = ingest(store, [str(corpus)], chunker, prune=True, progress=False)
        assert pruned.pruned == 1 and pruned.chunks_removed >= 1
        assert store.chunks_of("sub/note03.txt") == []
        assert "sub/note03.txt" not in {d.doc_id for d in store.documents()}
        assert store.check().ok


def test_prune_leaves_other_sources_alone(tmp_path: Path, corpus: Path) -> None:
    other = tmp_path / "other.md"
    other.write_text("# Other\n\nSomething else entirely.\n")
    chunker = RecursiveChunker(max_tokens=50)
    with Store(tmp_path / "rag.db", CountingEmbedder()) as store:
        ingest(store, [str(other)], chunker, progress=False)
        report = ingest(store, [str(corpus)], chunker, prune=True, progress=False)
        assert report.pruned == 0 and "other.md" in {d.doc_id for d in store.documents()}


def test_bad_input_is_reported(tmp_path: Path) -> None:
    chunker = RecursiveChunker(max_tokens=50)
    with Store(tmp_path / "rag.db", CountingEmbedder()) as store:
        with pytest.raises(ReaderError, match="no such file or directory"):
            ingest(store, [str(tmp_path / "missing")], chunker, progress=False)
        with pytest.raises(ValueError, match="batch_chunks must be an int >= 1"):
            ingest(store, [str(tmp_path)], chunker, progress=False, batch_chunks=0)
        with pytest.raises(TypeError, match="chunker must have a split"):
            ingest(store, [str(tmp_path)], 42, progress=False)  # type: ignore
        assert store.count() == 0
