"""Grounded answers with citations: retrieve, refuse when nothing relevant was found, else ask a
chat model to answer only from numbered sources and map its [n] markers back to documents.

    from llmsys.agent.chat_model import ChatModel
    from llmsys.rag.answer import RAG, answer
    from llmsys.rag.retrieval import Retriever

    rag = RAG(Retriever(store, mode="dense"), ChatModel(base_url, "my-model"), k=5,
              min_score=0.3, max_context_chars=8000)
    result = rag.answer("How do I install it?")            # -> Answer
    result.text, result.refused, result.refusal_reason
    for c in result.citations:                             # what each [n] of the text points at
        print(c.number, c.doc_id, c.source, c.start, c.end, c.page, c.headings)
    result.invalid_citations                               # [n] markers with no source n
    answer("How do I install it?", retriever, model, k=5)  # the same, in one call

Steps of `RAG.answer(question, filter=None)`:

1. Retrieve `fetch_k` hits (`retriever.search(question, fetch_k, filter)`); with a `reranker`
   (anything with `rerank(query, hits, k)`, e.g. `MaxSimReranker`) rerank them to `k`, else
   keep the first `k`.
2. Refuse without calling the model when there is no hit, or when `min_score` is set and no
   hit scores at least `min_score`, or when `min_similarity` is set and no hit's stored
   embedding has at least that cosine similarity with the question's embedding; hits below
   either are dropped. `min_similarity` is the gate to use with hybrid or reranked retrieval,
   whose scores are not comparable across questions. For all-MiniLM-L6-v2 about 0.3 works
   (the CLI's default): over the Cranfield abstracts, the best chunk of each of the 225
   queries has cosine >= 0.33 (median 0.68), while 11 of 12 off-topic questions (recipes,
   sports, films, ...) stay at or below 0.21 (one reached 0.32);
   `python benchmarks/rag_relevance_gate.py --cranfield DIR` measures it. The score `min_score`
   compares is `Hit.score` of the final ranking: the reranker's score when there is a
   reranker, else the retriever's -- cosine similarity for dense search, BM25 for lexical
   search, the fused score for hybrid search (RRF scores are about 1/60, so a cosine
   threshold makes no sense there). The refusal text is `REFUSAL` followed by a sentence
   saying why (best score and minimum).
3. Show the hits as numbered sources, `[n] title (source)` (plus the heading path and page
   when the chunk metadata has them) followed by the text, in retrieval order, within
   `max_context_chars` (counted over the source blocks). A source that does not fit is left
   out with every source after it (`Answer.omitted_sources` counts them); only when the
   first source alone is over the budget is it cut, visibly: its block ends with
   `TRUNCATION_NOTE`, `Source.truncated` is True and its `end` is where the kept text ends
   (a budget too small even for its header raises ValueError). A hit from
   `SentenceWindowChunker` shows its window (`metadata["window_text"]`, offsets
   `metadata["window"]`) unless `use_windows=False`.
4. Ask the model (system: answer only from the sources, cite as [n], say `REFUSAL` when they
   do not hold the answer; user: the sources, then the question) and parse its reply.
   Markers may be [1], [1, 3], [1; 3], [1-3], [1][2] or [source 2]; numbers outside the shown
   range are dropped from `citations` and listed in `invalid_citations`. A reply holding the
   refusal sentence (case, spacing and final punctuation ignored) gives `refused=True`.

Titles and sources come from the chunk metadata ("title", "source") when present, else from
the store's document rows (`store=`, or the retriever's `store` attribute), else the source is
the doc id. Endpoint failures raise `ModelError` naming the question; a reply without text
raises `ModelError` too.

Limits: the refusal sentence is matched literally, so a model paraphrasing it is not seen as
refusing. Numbers in brackets that are not citations ("[2024]") are taken for markers (and
reported as invalid when out of range). The document rows are cached: a document added after
the first answer is found on its first appearance, but a changed title or source of a document
already seen is not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from llmsys.agent.chat_model import ChatModel, ModelError, Usage
from llmsys.rag.checks import check_int
from llmsys.rag.store import Hit, Store

__all__ = ["RAG", "REFUSAL", "SYSTEM_PROMPT", "TRUNCATION_NOTE", "Answer", "Citation",
           "DocumentCatalog", "Reranker", "Searcher", "Source", "answer", "build_messages",
           "format_source", "is_refusal", "parse_citations", "select_sources", "store_of"]

REFUSAL = "I cannot answer this from the provided sources."

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given by the user. Do not use any "
    "other knowledge. Support every statement with the number of its source in square "
    "brackets, like [1] or [1][3]. If the sources do not contain the answer, reply with "
    f"exactly this sentence and nothing else: {REFUSAL}")


class Searcher(Protocol):
    """What `RAG` retrieves with: `Retriever`, or anything with the same `search`."""

    def search(self, query: str, k: int, filter: dict[str, Any] | None = None) -> list[Hit]: ...


class Reranker(Protocol):
    """What `RAG` reranks with: `MaxSimReranker`, or anything with the same `rerank`."""

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]: ...


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Source:
    """A passage shown to the model as `[number]`: `text == document.text[start:end]`;
    `truncated` when the passage was cut to the context budget."""

    number: int
    chunk_id: str
    doc_id: str
    title: str | None
    source: str
    text: str
    start: int
    end: int
    score: float
    page: int | None = None
    headings: tuple[str, ...] = ()
    truncated: bool = False


@dataclass(frozen=True)
class Citation:
    """A valid [number] marker of the answer and the source it points at."""

    number: int
    chunk_id: str
    doc_id: str
    title: str | None
    source: str
    start: int
    end: int
    text: str
    page: int | None = None
    headings: tuple[str, ...] = ()


@dataclass
class Answer:
    """What `RAG.answer` returns; `refusal_reason` is None unless `refused`."""

    question: str
    text: str
    citations: list[Citation]
    sources: list[Source]
    refused: bool
    refusal_reason: str | None = None
    invalid_citations: list[int] = field(default_factory=list)
    omitted_sources: int = 0
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (usage with its total)."""
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data


# ----------------------------------------------------------------------------- documents

class DocumentCatalog:
    """Title and source of each document id, read from the store when an id is first asked
    for (its one row from the SQLite store; from a store without `document(doc_id)` all rows
    are re-read); an id still unknown then gets (None, doc id) from then on."""

    def __init__(self, store: Store | None) -> None:
        if store is not None and not callable(getattr(store, "documents", None)):
            raise TypeError(f"store must be a Store (with documents()), got "
                            f"{type(store).__name__}")
        self.store = store
        self._rows: dict[str, tuple[str | None, str]] = {}

    def describe(self, hit: Hit) -> tuple[str | None, str]:
        """(title, source) of a hit: chunk metadata first, then the document row, else
        (None, doc id)."""
        title, source = self._lookup(hit.doc_id)
        meta_title, meta_source = hit.metadata.get("title"), hit.metadata.get("source")
        return (meta_title if isinstance(meta_title, str) and meta_title else title,
                meta_source if isinstance(meta_source, str) and meta_source else source)

    def _lookup(self, doc_id: str) -> tuple[str | None, str]:
        if doc_id not in self._rows and self.store is not None:
            one = getattr(self.store, "document", None)
            if callable(one):  # the SQLite store: one row per new document
                found = one(doc_id)
                if found is not None:
                    self._rows[doc_id] = found
            else:
                self._rows = {d.doc_id: (d.title, d.source) for d in self.store.documents()}
        return self._rows.setdefault(doc_id, (None, doc_id))  # a miss is not looked up again


def store_of(retriever: Any, store: Store | None) -> Store | None:
    """`store` if given, else the retriever's `store` attribute when it has documents()
    (the SQLite `Store` or the `QdrantStore`)."""
    if store is not None:
        return store
    candidate = getattr(retriever, "store", None)
    return candidate if callable(getattr(candidate, "documents", None)) else None


# ----------------------------------------------------------------------------- sources

def hit_page(metadata: dict[str, Any]) -> int | None:
    """The PDF page in chunk metadata, if any."""
    page = metadata.get("page")
    return page if isinstance(page, int) and not isinstance(page, bool) else None


def hit_headings(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The heading path in chunk metadata (empty when there is none)."""
    headings = metadata.get("headings")
    if isinstance(headings, list | tuple) and all(isinstance(h, str) for h in headings):
        return tuple(headings)
    return ()


def shown_span(hit: Hit, use_windows: bool) -> tuple[str, int, int]:
    """The text shown for a hit and its offsets: the sentence window when there is one."""
    window, text = hit.metadata.get("window"), hit.metadata.get("window_text")
    if (use_windows and isinstance(text, str) and isinstance(window, list | tuple)
            and len(window) == 2 and all(isinstance(x, int) for x in window)
            and window[1] - window[0] == len(text)):
        return text, int(window[0]), int(window[1])
    return hit.text, hit.start, hit.end


TRUNCATION_NOTE = "[... the rest of this source is cut: over the context budget]"


def format_source(source: Source) -> str:
    """The block a source is shown as: `[n] title (source)` (with the heading path and page
    when known), a line break, then the text (and `TRUNCATION_NOTE` when it was cut)."""
    label = source.title or source.doc_id
    where = [source.source]
    if source.headings and source.headings[-1] != label:
        where.append(" > ".join(source.headings))
    if source.page is not None:
        where.append(f"page {source.page}")
    note = f"\n{TRUNCATION_NOTE}" if source.truncated else ""
    return f"[{source.number}] {label} ({'; '.join(where)})\n{source.text}{note}"


def _cut(source: Source, budget: int) -> Source | None:
    """The source with its text cut (at a word boundary when there is one) so that its block,
    with the note, fits in `budget`; None if not even one character fits."""
    overhead = len(format_source(replace(source, text="", truncated=True)))
    keep = budget - overhead
    if keep <= 0:
        return None
    space = source.text.rfind(" ", 0, keep + 1)
    keep = space if space > keep // 2 else keep
    text = source.text[:keep].rstrip()
    return replace(source, text=text, end=source.start + len(text), truncated=True)


def select_sources(hits: Sequence[Hit], catalog: DocumentCatalog, max_chars: int,
                   use_windows: bool = True) -> tuple[list[Source], int]:
    """Numbered sources for `hits` in order while their blocks (joined by blank lines) fit in
    `max_chars`, and how many hits were left out. Only a first source over the budget alone
    is cut (marked `truncated`, its `end` moved to the end of the text kept)."""
    check_int("max_chars", max_chars, 1)
    sources: list[Source] = []
    used = 0
    for i, hit in enumerate(hits):
        title, where = catalog.describe(hit)
        text, start, end = shown_span(hit, use_windows)
        source = Source(len(sources) + 1, hit.chunk_id, hit.doc_id, title, where, text, start,
                        end, float(hit.score), hit_page(hit.metadata),
                        hit_headings(hit.metadata))
        size = len(format_source(source)) + (2 if sources else 0)
        if used + size <= max_chars:
            sources.append(source)
            used += size
            continue
        if sources:
            return sources, len(hits) - i
        first = _cut(source, max_chars)
        if first is None:
            raise ValueError(f"max_context_chars={max_chars} is too small to show even the "
                             f"header of the first source ({format_source(source)[:80]!r})")
        return [first], len(hits) - 1
    return sources, 0


# ----------------------------------------------------------------------------- prompt

def build_messages(question: str, sources: Sequence[Source]) -> list[dict[str, str]]:
    """The chat messages: the grounding instructions, then the sources and the question."""
    blocks = "\n\n".join(format_source(s) for s in sources)
    user = f"Sources:\n\n{blocks}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_MARKER = re.compile(r"\[\s*(?:sources?\s*)?(\d+(?:\s*(?:[,;]|-|–|and)\s*(?:sources?\s*)?\d+)*)"
                     r"\s*\]", re.IGNORECASE)
_NUMBER_OR_RANGE = re.compile(r"(\d+)(?:\s*[-–]\s*(\d+))?")
_MAX_RANGE = 100  # [1-1000000] is not expanded beyond this many numbers


def parse_citations(text: str) -> list[int]:
    """The numbers of the citation markers in `text`, unique, in order of first appearance
    ([1], [1, 3], [1; 3], [1-3], [1][2], [source 2])."""
    numbers: list[int] = []
    for marker in _MARKER.finditer(text):
        for m in _NUMBER_OR_RANGE.finditer(marker.group(1)):
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) else low
            span = range(low, high + 1) if low <= high < low + _MAX_RANGE else (low, high)
            numbers.extend(n for n in span if n not in numbers)
    return numbers


def _normalised(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".!")


def is_refusal(text: str, refusal: str = REFUSAL) -> bool:
    """True when `text` holds the refusal sentence (case, spacing, final . or ! ignored)."""
    return _normalised(refusal) in " ".join(text.lower().split())


# ----------------------------------------------------------------------------- RAG



@dataclass
class RAG:
    """Retriever + chat model answering with citations (see the module docstring).

    `fetch_k` is how many hits are retrieved before reranking (default: `k`, or 4 * k with a
    reranker); `min_score` None means any hit is relevant enough."""

    retriever: Searcher
    model: ChatModel
    k: int = 5
    min_score: float | None = None
    max_context_chars: int = 12_000
    reranker: Reranker | None = None
    fetch_k: int | None = None
    max_answer_tokens: int = 512
    use_windows: bool = True
    store: Store | None = None
    min_similarity: float | None = None
    catalog: DocumentCatalog = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not callable(getattr(self.retriever, "search", None)):
            raise TypeError(f"retriever must have search(query, k, filter), got "
                            f"{type(self.retriever).__name__}")
        if not callable(getattr(self.model, "complete", None)):
            raise TypeError(f"model must be a ChatModel (with complete(messages)), got "
                            f"{type(self.model).__name__}")
        if self.reranker is not None and not callable(getattr(self.reranker, "rerank", None)):
            raise TypeError(f"reranker must have rerank(query, hits, k), got "
                            f"{type(self.reranker).__name__}")
        check_int("k", self.k, 1)
        check_int("max_context_chars", self.max_context_chars, 1)
        check_int("max_answer_tokens", self.max_answer_tokens, 1)
        if self.fetch_k is not None:
            check_int("fetch_k", self.fetch_k, self.k)
        for name in ("min_score", "min_similarity"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or value != value):
                raise ValueError(f"{name} must be a number or None, got {value!r}")
        store = store_of(self.retriever, self.store)
        if self.min_similarity is not None and not all(
                callable(getattr(store, name, None)) for name in ("embed", "vectors")):
            raise ValueError("min_similarity needs the store, one with embed() and vectors() "
                             "(the SQLite Store): pass store=, or a retriever with a .store")
        self.catalog = DocumentCatalog(store)

    @property
    def score_name(self) -> str:
        """What the scores compared with `min_score` are."""
        if self.reranker is not None:
            return f"the {type(self.reranker).__name__} score"
        mode = getattr(self.retriever, "mode", None)
        names = {"dense": "the dense cosine similarity", "bm25": "the BM25 score",
                 "hybrid": "the fused hybrid score"}
        return names.get(mode, "the retrieval score")

    def retrieve(self, question: str, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The final ranking: retrieved, reranked when there is a reranker, cut to `k`."""
        depth = self.fetch_k or (4 * self.k if self.reranker is not None else self.k)
        hits = list(self.retriever.search(question, depth, filter))
        if self.reranker is not None and hits:
            return list(self.reranker.rerank(question, hits, self.k))
        return hits[:self.k]

    def answer(self, question: str, filter: dict[str, Any] | None = None) -> Answer:
        """Retrieve, refuse or ask the model, and parse its citations."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be a non-empty string, got {question!r}")
        hits = self.retrieve(question, filter)
        relevant, reason = self._relevant(hits)
        if reason is None and self.min_similarity is not None:
            relevant, reason = self._similar(question, relevant)
        if reason is not None:
            return Answer(question, f"{REFUSAL} {reason}", [], [], True, reason)
        sources, omitted = select_sources(relevant, self.catalog, self.max_context_chars,
                                          self.use_windows)
        return self._generate(question, sources, omitted)

    def _relevant(self, hits: list[Hit]) -> tuple[list[Hit], str | None]:
        if not hits:
            return [], "Nothing was retrieved for the question."
        if self.min_score is None:
            return hits, None
        kept = [h for h in hits if h.score >= self.min_score]
        if not kept:
            best = max(h.score for h in hits)
            return [], (f"Nothing relevant was retrieved: the best passage scored {best:.4g} "
                        f"({self.score_name}), below the minimum of {self.min_score:.4g}.")
        return kept, None

    def _similar(self, question: str, hits: list[Hit]) -> tuple[list[Hit], str | None]:
        """The hits whose stored embedding has cosine >= `min_similarity` with the
        question's (whatever the ranking score was: BM25, fused, reranked)."""
        store = self.catalog.store
        assert store is not None and self.min_similarity is not None
        query = store.embed([question])[0].astype(np.float64)
        vectors = store.vectors([h.chunk_id for h in hits]).astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        cosines = vectors @ query / np.maximum(norms, 1e-12)
        kept = [h for h, c in zip(hits, cosines, strict=True) if c >= self.min_similarity]
        if kept:
            return kept, None
        return [], (f"Nothing relevant was retrieved: the closest passage has cosine "
                    f"similarity {float(cosines.max()):.3f} to the question, below the "
                    f"minimum of {self.min_similarity:.3g}.")

    def _generate(self, question: str, sources: list[Source], omitted: int) -> Answer:
        messages = build_messages(question, sources)
        try:
            reply = self.model.complete(messages, max_tokens=self.max_answer_tokens)
        except ModelError as e:
            raise ModelError(f"answer generation failed for question {question!r}: {e}",
                             e.status) from e
        text = reply.message.get("content")
        if not isinstance(text, str) or not text.strip():
            raise ModelError(f"answer generation for question {question!r}: the model "
                             f"returned no text (finish reason {reply.finish_reason!r})")
        numbers = parse_citations(text)
        by_number = {s.number: s for s in sources}
        citations = [_citation(by_number[n]) for n in numbers if n in by_number]
        invalid = [n for n in numbers if n not in by_number]
        refused = is_refusal(text)
        return Answer(question, text, citations, sources, refused,
                      "The model found no answer in the sources." if refused else None,
                      invalid, omitted, reply.usage)


def _citation(s: Source) -> Citation:
    return Citation(s.number, s.chunk_id, s.doc_id, s.title, s.source, s.start, s.end, s.text,
                    s.page, s.headings)


def answer(question: str, retriever: Searcher, model: ChatModel, *, k: int = 5,
           min_score: float | None = None, max_context_chars: int = 12_000,
           reranker: Reranker | None = None, filter: dict[str, Any] | None = None,
           store: Store | None = None, min_similarity: float | None = None) -> Answer:
    """One grounded answer: `RAG(retriever, model, ...).answer(question, filter)`."""
    rag = RAG(retriever, model, k=k, min_score=min_score, max_context_chars=max_context_chars,
              reranker=reranker, store=store, min_similarity=min_similarity)
    return rag.answer(question, filter)
