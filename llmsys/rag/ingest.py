"""Ingestion: files, folders and URLs -> chunks -> embeddings -> the store, with progress.

    from llmsys.rag.chunking import RecursiveChunker
    from llmsys.rag.ingest import ingest
    report = ingest(store, ["docs/", "paper.pdf", "https://example.com/post"],
                    RecursiveChunker(max_tokens=200), prune=True)
    print(report.summary())   # 12 documents: 3 written, 9 unchanged, 1 pruned; 41 chunks ...

    llmsys rag ingest docs/ paper.pdf --db rag.db          # the same from the command line

Steps, per group of documents (a group holds about `batch_chunks` chunks):
1. read: `readers.read_sources` (files a folder walk cannot read are reported, not fatal);
2. chunk: `chunker.split(document.text)`; each chunk's metadata gets the heading path and
   PDF page of the section it starts in (`SourceDocument.locate`), for citations;
3. embed: the chunks of the group's changed documents (content hash differs from the
   stored one) that the store does not hold yet, in one `embed` call, so a corpus of many
   small files is embedded in full batches;
4. store: `Store.upsert` per document, each in its own transaction. Unchanged documents are
   skipped, so re-running an ingestion (after a crash, or after editing a few files) only
   does the new work.
With `prune=True`, stored documents that came from one of the given folders or files but
were not seen in this run (deleted files) are removed afterwards.

The report counts documents (seen, written, unchanged, pruned), chunks added and removed,
skipped files with their reasons, and the wall time; `chunks_per_s` is the ingestion
throughput (chunks written per second, reading and embedding included).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.rag.chunking import Chunk, Chunker
from llmsys.rag.readers import Skipped, SourceDocument, read_sources
from llmsys.rag.store import Store, chunk_id

__all__ = ["IngestReport", "chunk_document", "ingest", "ingest_documents"]


@dataclass
class IngestReport:
    """What an ingestion did (see the module docstring)."""

    documents: int = 0
    written: int = 0
    unchanged: int = 0
    pruned: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set, repr=False)  # doc ids read in this run

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_added / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (f"{self.documents} documents: {self.written} written, {self.unchanged} "
                f"unchanged, {self.pruned} pruned; {self.chunks_added} chunks added, "
                f"{self.chunks_removed} removed in {self.seconds:.1f} s "
                f"({self.chunks_per_s:.1f} chunks/s)")
        if self.skipped:
            text += f"; {len(self.skipped)} files skipped"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "written": self.written,
                "unchanged": self.unchanged, "pruned": self.pruned,
                "chunks_added": self.chunks_added, "chunks_removed": self.chunks_removed,
                "seconds": self.seconds, "chunks_per_s": self.chunks_per_s,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}


def chunk_document(document: SourceDocument, chunker: Chunker) -> list[Chunk]:
    """The document's chunks, each with the `headings` and `page` of the section it starts
    in added to its metadata (a chunker's own `headings` are kept)."""
    chunks = []
    for chunk in chunker.split(document.text):
        section = document.locate(chunk.start)
        metadata = dict(chunk.metadata)
        if section is not None:
            if section.headings and not metadata.get("headings"):
                metadata["headings"] = list(section.headings)
            if section.page is not None:
                metadata["page"] = section.page
        chunks.append(Chunk(chunk.text, chunk.start, chunk.end, metadata))
    return chunks


def ingest(store: Store, sources: list[str], chunker: Chunker, prune: bool = False,
           progress: bool = True, batch_chunks: int = 256) -> IngestReport:
    """Read, chunk, embed and store every document of `sources` (paths and URLs)."""
    skipped: list[Skipped] = []
    documents = read_sources(sources, skipped)  # checks every source before reading any
    report = ingest_documents(store, documents, chunker, progress, batch_chunks)
    report.skipped = skipped
    if prune:
        started = time.perf_counter()
        report.pruned, removed = _prune(store, sources, report.seen_ids)
        report.chunks_removed += removed
        report.seconds += time.perf_counter() - started
    return report


def ingest_documents(store: Store, documents: Iterable[SourceDocument], chunker: Chunker,
                     progress: bool = True, batch_chunks: int = 256) -> IngestReport:
    """Steps 2-4 of the module docstring over already-read documents."""
    if not isinstance(batch_chunks, int) or isinstance(batch_chunks, bool) or batch_chunks < 1:
        raise ValueError(f"batch_chunks must be an int >= 1, got {batch_chunks!r}")
    if not callable(getattr(chunker, "split", None)):
        raise TypeError(f"chunker must have a split(text) method, got {type(chunker).__name__}")
    from tqdm import tqdm

    report = IngestReport()
    started = time.perf_counter()
    with tqdm(desc="ingest", unit="doc", file=sys.stderr, leave=False,
              disable=not progress) as bar:
        for group in _groups(documents, chunker, batch_chunks):
            vectors = _embed_new(store, group)
            for document, chunks in group:
                result = store.upsert(document, chunks, vectors)
                report.documents += 1
                report.seen_ids.add(document.doc_id)
                report.unchanged += result.unchanged
                report.written += not result.unchanged
                report.chunks_added += result.added
                report.chunks_removed += result.removed
            report.seconds = time.perf_counter() - started
            bar.update(len(group))
            bar.set_postfix(chunks=report.chunks_added,
                            chunks_per_s=f"{report.chunks_per_s:.0f}")
    report.seconds = time.perf_counter() - started
    return report


def _groups(documents: Iterable[SourceDocument], chunker: Chunker, batch_chunks: int
            ) -> Iterator[list[tuple[SourceDocument, list[Chunk]]]]:
    group: list[tuple[SourceDocument, list[Chunk]]] = []
    size = 0
    for document in documents:
        chunks = chunk_document(document, chunker)
        group.append((document, chunks))
        size += len(chunks)
        if size >= batch_chunks:
            yield group
            group, size = [], 0
    if group:
        yield group


def _embed_new(store: Store, group: list[tuple[SourceDocument, list[Chunk]]]
               ) -> dict[str, np.ndarray]:
    """Embeddings (chunk id -> vector) of the group's chunks the store does not hold, for
    documents whose content changed, computed in one call."""
    wanted: dict[str, str] = {}
    for document, chunks in group:
        if store.content_hash(document.doc_id) == document.content_hash:
            continue
        known = store.chunk_ids(document.doc_id)
        for chunk in chunks:
            cid = chunk_id(document.doc_id, chunk.text, chunk.start, chunk.end)
            if cid not in known:
                wanted[cid] = chunk.text
    if not wanted:
        return {}
    vectors = store.embed(list(wanted.values()))
    return dict(zip(wanted, vectors, strict=True))


def _prune(store: Store, sources: list[str], seen: set[str]) -> tuple[int, int]:
    """Delete stored documents read from one of the path `sources` but not seen now."""
    roots = [os.path.abspath(s) for s in sources if Path(s).exists()]
    pruned = removed = 0
    for document in store.documents():
        if document.doc_id in seen or not _under(document.source, roots):
            continue
        removed += store.delete(document.doc_id)
        pruned += 1
    return pruned, removed


def _under(source: str, roots: list[str]) -> bool:
    return any(source == root or source.startswith(root.rstrip(os.sep) + os.sep)
               for root in roots)
