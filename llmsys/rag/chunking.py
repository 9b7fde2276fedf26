"""Chunkers of the RAG pipeline: they cut one document into `Chunk`s to embed, search and cite.

    from llmsys.rag.chunking import HFTokenizerCounter, RecursiveChunker
    chunker = RecursiveChunker(max_tokens=200, counter=HFTokenizerCounter("tokenizer.json"))
    for chunk in chunker.split(markdown):
        assert markdown[chunk.start:chunk.end] == chunk.text   # exact offsets, for citations
        chunk.metadata["headings"]                             # e.g. ["Install", "From source"]

Every chunker is a small frozen dataclass with one method, `split(text) -> list[Chunk]`:

- `FixedTokenChunker(size, overlap, counter)`: windows of `size` tokens; neighbours share
  `overlap` tokens; the last window may be shorter.
- `RecursiveChunker(max_tokens, counter)`: Markdown- and plain-text-aware. A document is cut
  into sections at ATX headings (`#` .. `######`; the heading stays with its section and the
  heading path goes into metadata), sections into blocks (paragraphs, fenced code blocks,
  tables), paragraphs that are too long into sentences, and sentences that are still too long
  into words (token windows). Adjacent pieces are then merged back up to `max_tokens`, never
  across a heading. A fenced code block or a table is never cut unless it alone exceeds
  `max_tokens`; then it is cut at line boundaries (`metadata["split_block"]` is True).
- `SentenceWindowChunker(window)`: one chunk per sentence (what is embedded and searched);
  `metadata["window"]` is the (start, end) span of the sentence with `window` sentences on each
  side, and `metadata["window_text"]` its text (what is shown to the LLM).
- `SemanticChunker(embedder, breakpoint_percentile, max_tokens, counter)`: embeds the sentences
  (each gap compares the `buffer_size` + 1 sentences before it with as many after it), and
  breaks where that cosine distance is above the given percentile of all of them; groups over
  `max_tokens` are cut again by `RecursiveChunker`. `embedder` is any object with
  `embed(texts) -> np.ndarray` returning one L2-normalised float32 row per text.

What every chunker guarantees: `chunk.text == document[chunk.start:chunk.end]`; chunks come in
document order; no chunk is empty or starts or ends with whitespace (except that a piece of an
oversized code block keeps its first line's indentation); together they cover every
non-whitespace character; and, apart from `FixedTokenChunker` with `overlap > 0`, they do not
overlap. An empty or whitespace-only document gives no chunks. Metadata always has `chunker`
("fixed", "recursive", "sentence_window" or "semantic").

Tokens are counted by a `TokenCounter`: `WhitespaceCounter` (the default: each run of letters
and digits is one token, each other non-space character is one) or `HFTokenizerCounter`
(a `tokenizers` tokenizer, e.g. the embedding model's tokenizer.json). Windows never split a
character, so with byte-level tokenizers (several tokens per character) a window can be a few
tokens short of `size`.

`split_sentences(text)` is the small rule-based sentence splitter the chunkers share: a
sentence ends at `.`, `!` or `?` (plus closing quotes or brackets) followed by whitespace and
then a capital letter, a digit or an opening quote, or by a line break; never after a common
abbreviation (e.g., i.e., Dr., Fig., et al., ...), a single capital initial or a dotted
abbreviation like U.S.; a blank line always ends a sentence.

Limits: Markdown structure means ATX headings (`# Title`), ``` and ~~~ fences, and `|` table
lines; Setext headings, indented code blocks and lists get no special treatment. The sentence
rules are for English-like text: "plan B. Then" or "U.S. The" stay one sentence, and CJK
sentence marks (。！？) do not end sentences.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

Span = tuple[int, int]

__all__ = ["ABBREVIATIONS", "Chunk", "Chunker", "Embedder", "FixedTokenChunker",
           "HFTokenizerCounter", "RecursiveChunker", "SemanticChunker", "SentenceWindowChunker",
           "TokenCounter", "WhitespaceCounter", "split_sentences"]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: `text == document[start:end]` (character offsets)."""

    text: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"Chunk needs 0 <= start <= end, got start={self.start}, "
                             f"end={self.end}")
        if len(self.text) != self.end - self.start:
            raise ValueError(f"Chunk text has {len(self.text)} characters but its span "
                             f"{self.start}:{self.end} has {self.end - self.start}")


class Chunker(Protocol):
    """What every chunker here is: `split(text)` returns the document's chunks in order."""

    def split(self, text: str) -> list[Chunk]: ...


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


# ----------------------------------------------------------------------------- token counters

@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens and gives each token's (start, end) character span, in order.

    `count(text) == len(offsets(text))`. Spans never go backwards, but neighbouring tokens may
    share a character (byte-level tokenizers), and characters a tokenizer drops (control
    characters, combining accents) may be in no span.
    """

    def count(self, text: str) -> int: ...

    def offsets(self, text: str) -> list[Span]: ...


_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class WhitespaceCounter:
    """Words and punctuation: each run of letters/digits/_ is a token, and so is each other
    non-space character ("don't stop." is 5 tokens: don ' t stop .)."""

    def count(self, text: str) -> int:
        return len(_WORD_OR_MARK.findall(text))

    def offsets(self, text: str) -> list[Span]:
        return [m.span() for m in _WORD_OR_MARK.finditer(text)]


class HFTokenizerCounter:
    """Tokens of a `tokenizers` tokenizer, without special tokens, truncation or padding.

    `tokenizer` is a tokenizer.json path, a directory holding one, or a `tokenizers.Tokenizer`
    (which is copied, so its own truncation and padding settings are left alone).
    """

    def __init__(self, tokenizer: str | os.PathLike[str] | Tokenizer) -> None:
        self._tokenizer = _load_tokenizer(tokenizer)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def offsets(self, text: str) -> list[Span]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(int(s), int(e)) for s, e in encoding.offsets]


def _load_tokenizer(source: str | os.PathLike[str] | Tokenizer) -> Tokenizer:
    from tokenizers import Tokenizer

    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"HFTokenizerCounter: no tokenizer file at {str(path)!r}; "
                                    "pass a tokenizer.json path, its directory or a Tokenizer")
        tokenizer = Tokenizer.from_file(str(path))
    elif isinstance(source, Tokenizer):
        tokenizer = Tokenizer.from_str(source.to_str())
    else:
        raise TypeError(f"HFTokenizerCounter needs a tokenizer.json path or a "
                        f"tokenizers.Tokenizer, got {type(source).__name__}")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


# ----------------------------------------------------------------------------- validation

def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_counter(owner: str, counter: object) -> None:
    if not isinstance(counter, TokenCounter):
        raise TypeError(f"{owner}.counter must have count(text) and offsets(text) methods "
                        f"(a TokenCounter), got {type(counter).__name__}")


# ----------------------------------------------------------------------------- spans

def _lstrip(text: str, start: int, end: int) -> int:
    """The first non-whitespace index in [start, end), or end."""
    while start < end and text[start].isspace():
        start += 1
    return start


def _rstrip(text: str, start: int, end: int) -> int:
    """One past the last non-whitespace index in [start, end), or start."""
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _strip(text: str, start: int, end: int) -> Span:
    start = _lstrip(text, start, end)
    return start, _rstrip(text, start, end)


def _chunk(text: str, span: Span, metadata: dict[str, Any]) -> Chunk:
    return Chunk(text[span[0]:span[1]], span[0], span[1], metadata)


# ----------------------------------------------------------------------------- token windows

def _clean_cuts(offsets: list[Span]) -> list[int]:
    """Token indices where a window may start or end without splitting a character: 0, the
    token count, and every token that starts at or after the end of all tokens before it."""
    cuts, reach = [0], 0
    for k, (start, end) in enumerate(offsets):
        if k and start >= reach:
            cuts.append(k)
        reach = max(reach, end)
    if offsets:
        cuts.append(len(offsets))
    return cuts


def _window_end(cuts: list[int], i: int, size: int,
                fits: Callable[[int, int], bool] | None) -> int:
    """The furthest cut at most `size` tokens after i (that `fits`, when given); the nearest
    cut after i when none is."""
    first = bisect.bisect_right(cuts, i)
    last = bisect.bisect_right(cuts, i + size) - 1
    for k in range(last, first - 1, -1):
        if fits is None or fits(i, cuts[k]):
            return cuts[k]
    return cuts[first]


def _token_windows(offsets: list[Span], size: int, overlap: int,
                   fits: Callable[[int, int], bool] | None = None) -> list[Span]:
    """Token index ranges [i, j) of at most `size` tokens, each starting `overlap` tokens
    before the previous one ended (fewer where that would split a character, or where the
    window would end no further than the previous one)."""
    cuts, n = _clean_cuts(offsets), len(offsets)
    windows = [(0, _window_end(cuts, 0, size, fits))]
    while windows[-1][1] < n:
        previous_end = windows[-1][1]
        k = max(bisect.bisect_left(cuts, previous_end - overlap),
                bisect.bisect_right(cuts, windows[-1][0]))
        while True:  # ends at k = previous_end at the latest: that window ends further
            j = _window_end(cuts, cuts[k], size, fits)
            if j > previous_end:
                break
            k += 1
        windows.append((cuts[k], j))
    return windows


def _window_span(text: str, offsets: list[Span], i: int, j: int) -> Span:
    """The character span of tokens [i, j), stretched over any non-space characters that no
    token covers up to the next token (or the text's ends), then stripped."""
    start = _lstrip(text, 0, offsets[0][0]) if i == 0 else offsets[i][0]
    end = max(e for _, e in offsets[i:j])
    following = offsets[j][0] if j < len(offsets) else len(text)
    end = max(end, _rstrip(text, end, following))
    return _strip(text, start, end)


# ----------------------------------------------------------------------------- fixed windows

@dataclass(frozen=True)
class FixedTokenChunker:
    """Windows of `size` tokens; neighbouring windows share `overlap` tokens.

    metadata: chunker="fixed", token_range=(i, j) (token indices in the whole document),
    n_tokens=j - i.
    """

    size: int
    overlap: int = 0
    counter: TokenCounter = field(default_factory=WhitespaceCounter)

    def __post_init__(self) -> None:
        _check_int("FixedTokenChunker.size", self.size, 1)
        _check_int("FixedTokenChunker.overlap", self.overlap, 0)
        if self.overlap >= self.size:
            raise ValueError(f"FixedTokenChunker.overlap must be smaller than size "
                             f"({self.size}), got {self.overlap}")
        _check_counter("FixedTokenChunker", self.counter)

    def split(self, text: str) -> list[Chunk]:
        offsets = self.counter.offsets(text)
        if not offsets:
            return _untokenised(text, {"chunker": "fixed", "token_range": (0, 0), "n_tokens": 0})
        chunks: list[Chunk] = []
        for i, j in _token_windows(offsets, self.size, self.overlap):
            span = _window_span(text, offsets, i, j)
            if span[0] < span[1] and (not chunks or span[1] > chunks[-1].end):  # adds text
                chunks.append(_chunk(text, span, {"chunker": "fixed", "token_range": (i, j),
                                                  "n_tokens": j - i}))
        return chunks


def _untokenised(text: str, metadata: dict[str, Any]) -> list[Chunk]:
    """A text with no tokens: nothing, or one chunk when it still has non-space characters
    (ones the tokenizer drops)."""
    span = _strip(text, 0, len(text))
    return [_chunk(text, span, metadata)] if span[0] < span[1] else []


# ----------------------------------------------------------------------------- sentences

ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "cf", "fig", "figs", "eq",
    "eqs", "al", "approx", "ca", "vol", "pp", "dept", "gen", "gov", "sen", "rep", "e.g", "i.e",
})
_BLANK_LINE = re.compile(r"(?>\r\n|\r|\n)[^\S\r\n]*(?>\r\n|\r|\n)")
_TERMINATOR = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_SPACE = re.compile(r"\s+")
_TRAILING_WORD = re.compile(r"[\w.]+\Z")
_DOTTED = re.compile(r"(?:\w\.)+\w")
_OPENERS = "\"'“‘(["


def split_sentences(text: str) -> list[Span]:
    """The (start, end) spans of the sentences of `text`, stripped of whitespace, in order."""
    return _sentence_spans(text, 0, len(text))


def _sentence_spans(text: str, start: int, end: int) -> list[Span]:
    spans = []
    for p_start, p_end in _paragraphs(text, start, end):
        cut = p_start
        for m in _TERMINATOR.finditer(text, p_start, p_end):
            if _ends_sentence(text, m, p_end):
                spans.append((cut, m.end()))
                cut = m.end()
        spans.append((cut, p_end))
    return [s for s in (_strip(text, a, b) for a, b in spans) if s[0] < s[1]]


def _paragraphs(text: str, start: int, end: int) -> list[Span]:
    """[start, end) cut at blank lines."""
    spans, cut = [], start
    for m in _BLANK_LINE.finditer(text, start, end):
        spans.append((cut, m.start()))
        cut = m.end()
    spans.append((cut, end))
    return spans


def _ends_sentence(text: str, m: re.Match[str], end: int) -> bool:
    space = _SPACE.match(text, m.end(), end)
    if space is None or space.end() >= end:
        return False
    if m.group().startswith(".") and not m.group().startswith("..") \
            and _is_abbreviation(text, m.start()):
        return False
    if "\n" in space.group() or "\r" in space.group():
        return True
    after = text[space.end()]
    return after.isupper() or after.isdigit() or after in _OPENERS


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the word before the period at `dot` is an abbreviation or an initial."""
    word = _TRAILING_WORD.search(text, max(0, dot - 40), dot)
    if word is None:
        return False
    w = word.group()
    return (w.lower() in ABBREVIATIONS or (len(w) == 1 and w.isupper())
            or _DOTTED.fullmatch(w) is not None)


@dataclass(frozen=True)
class SentenceWindowChunker:
    """One chunk per sentence; metadata: chunker="sentence_window", sentence (its index),
    window=(start, end) (the sentence with `window` sentences each side) and window_text."""

    window: int = 1

    def __post_init__(self) -> None:
        _check_int("SentenceWindowChunker.window", self.window, 0)

    def split(self, text: str) -> list[Chunk]:
        spans = split_sentences(text)
        chunks = []
        for k, span in enumerate(spans):
            w_start = spans[max(0, k - self.window)][0]
            w_end = spans[min(len(spans) - 1, k + self.window)][1]
            chunks.append(_chunk(text, span, {
                "chunker": "sentence_window", "sentence": k, "window": (w_start, w_end),
                "window_text": text[w_start:w_end]}))
        return chunks


# ----------------------------------------------------------------------------- Markdown blocks

BlockKind = Literal["heading", "code", "table", "text"]
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


@dataclass(frozen=True)
class _Block:
    kind: BlockKind
    start: int
    end: int
    level: int = 0
    title: str = ""


def _lines(text: str, start: int, end: int) -> list[Span]:
    """(start, end) of each line in [start, end), without its line break."""
    lines = []
    for m in _LINE.finditer(text, start, end):
        if m.start() == m.end():
            break
        lines.append((m.start(), m.start() + len(m.group().rstrip("\r\n"))))
    return lines


def _line_kind(line: str) -> BlockKind | Literal["fence", "blank"]:
    if not line.strip():
        return "blank"
    fence = _FENCE.fullmatch(line)
    if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
        return "fence"
    if _HEADING.fullmatch(line):
        return "heading"
    return "table" if line.lstrip(" \t").startswith("|") else "text"


def _fence_end(text: str, lines: list[Span], k: int) -> int:
    """The index of the line closing the fence opened at line k (the last line if none)."""
    opening = _FENCE.fullmatch(text[lines[k][0]:lines[k][1]])
    assert opening is not None
    marker = opening.group(1)
    closing = re.compile(rf" {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*")
    for m in range(k + 1, len(lines)):
        if closing.fullmatch(text[lines[m][0]:lines[m][1]]):
            return m
    return len(lines) - 1


def _heading(text: str, span: Span) -> _Block:
    m = _HEADING.fullmatch(text[span[0]:span[1]])
    assert m is not None
    title = _CLOSING_HASHES.sub("", m.group(2) or "").strip()
    return _Block("heading", *_strip(text, *span), level=len(m.group(1)), title=title)


def _blocks(text: str) -> list[_Block]:
    """Headings, fenced code blocks, tables and paragraphs, in order, stripped."""
    lines, blocks, k = _lines(text, 0, len(text)), [], 0
    while k < len(lines):
        kind = _line_kind(text[lines[k][0]:lines[k][1]])
        last = k
        if kind == "fence":
            last = _fence_end(text, lines, k)
            blocks.append(_Block("code", *_strip(text, lines[k][0], lines[last][1])))
        elif kind == "heading":
            blocks.append(_heading(text, lines[k]))
        elif kind != "blank":
            while last + 1 < len(lines) and \
                    _line_kind(text[lines[last + 1][0]:lines[last + 1][1]]) == kind:
                last += 1
            blocks.append(_Block(kind, *_strip(text, lines[k][0], lines[last][1])))
        k = last + 1
    return blocks


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(start, level, title) of each ATX heading outside fenced code blocks, in order."""
    return [(b.start, b.level, b.title) for b in _blocks(text) if b.kind == "heading"]


def _sections(blocks: list[_Block]) -> list[tuple[list[str], list[_Block]]]:
    """Blocks grouped under their heading (the heading first), with the heading path."""
    path: list[tuple[int, str]] = []
    sections: list[tuple[list[str], list[_Block]]] = [([], [])]
    for block in blocks:
        if block.kind == "heading":
            while path and path[-1][0] >= block.level:
                path.pop()
            path.append((block.level, block.title))
            sections.append(([title for _, title in path], [block]))
        else:
            sections[-1][1].append(block)
    return [section for section in sections if section[1]]


# ----------------------------------------------------------------------------- recursive

_Piece = tuple[int, int, bool]  # start, end, split_block


@dataclass(frozen=True)
class RecursiveChunker:
    """Structure-aware chunks of at most `max_tokens` tokens (see the module docstring).

    metadata: chunker="recursive", headings (the heading path, [] before the first heading),
    split_block (True when the chunk holds part of a code block or table too big for one
    chunk), n_tokens. A chunk exceeds `max_tokens` only when one token (or one character of a
    byte-level tokenizer) does.
    """

    max_tokens: int
    counter: TokenCounter = field(default_factory=WhitespaceCounter)

    def __post_init__(self) -> None:
        _check_int("RecursiveChunker.max_tokens", self.max_tokens, 1)
        _check_counter("RecursiveChunker", self.counter)

    def split(self, text: str) -> list[Chunk]:
        chunks = []
        for headings, blocks in _sections(_blocks(text)):
            pieces = [piece for block in blocks for piece in self._pieces(text, block)]
            for start, end, split_block, n_tokens in self._merge(text, pieces):
                chunks.append(_chunk(text, (start, end), {
                    "chunker": "recursive", "headings": list(headings),
                    "split_block": split_block, "n_tokens": n_tokens}))
        return chunks

    def _fits(self, text: str, start: int, end: int) -> bool:
        return self.counter.count(text[start:end]) <= self.max_tokens

    def _pieces(self, text: str, block: _Block) -> list[_Piece]:
        if self._fits(text, block.start, block.end):
            return [(block.start, block.end, False)]
        if block.kind in ("code", "table"):
            return self._split_lines(text, block.start, block.end)
        if block.kind == "heading":
            return self._split_words(text, block.start, block.end, False)
        return [piece for start, end in _sentence_spans(text, block.start, block.end)
                for piece in self._split_sentence(text, start, end)]

    def _split_sentence(self, text: str, start: int, end: int) -> list[_Piece]:
        if self._fits(text, start, end):
            return [(start, end, False)]
        return self._split_words(text, start, end, False)

    def _split_lines(self, text: str, start: int, end: int) -> list[_Piece]:
        """Consecutive lines grouped up to max_tokens; a line too long alone is cut in words."""
        pieces: list[_Piece] = []
        group: Span | None = None
        for line_start, line_end in _lines(text, start, end):
            blank = not text[line_start:line_end].strip()
            if group is not None and (blank or self._fits(text, group[0], line_end)):
                group = group if blank else (group[0], _rstrip(text, line_start, line_end))
                continue
            if group is not None:
                pieces.append((group[0], group[1], True))
                group = None
            if blank:
                continue
            if self._fits(text, line_start, line_end):
                group = (line_start, _rstrip(text, line_start, line_end))
            else:
                pieces.extend(self._split_words(text, line_start, line_end, True))
        if group is not None:
            pieces.append((group[0], group[1], True))
        return pieces

    def _split_words(self, text: str, start: int, end: int, split_block: bool) -> list[_Piece]:
        """[start, end) cut into token windows that fit (counted on their own text)."""
        start, end = _strip(text, start, end)
        sub = text[start:end]
        offsets = self.counter.offsets(sub)
        if not offsets:
            return [(start, end, split_block)] if start < end else []

        def fits(i: int, j: int) -> bool:
            s, e = _window_span(sub, offsets, i, j)
            return self.counter.count(sub[s:e]) <= self.max_tokens

        pieces = []
        for i, j in _token_windows(offsets, self.max_tokens, 0, fits):
            s, e = _window_span(sub, offsets, i, j)
            if s < e:
                pieces.append((start + s, start + e, split_block))
        return pieces

    def _merge(self, text: str, pieces: list[_Piece]) -> list[tuple[int, int, bool, int]]:
        """Adjacent pieces joined greedily while the joined span fits."""
        merged: list[tuple[int, int, bool, int]] = []
        current: tuple[int, int, bool, int] | None = None
        for start, end, split_block in pieces:
            if current is not None:
                n_tokens = self.counter.count(text[current[0]:end])
                if n_tokens <= self.max_tokens:
                    current = (current[0], end, current[2] or split_block, n_tokens)
                    continue
                merged.append(current)
            current = (start, end, split_block, self.counter.count(text[start:end]))
        if current is not None:
            merged.append(current)
        return merged


# ----------------------------------------------------------------------------- semantic

@dataclass(frozen=True)
class SemanticChunker:
    """Groups of consecutive sentences, broken where meaning shifts (see the module docstring).

    At each gap between sentences k and k+1, the text of sentences k-b..k is compared with
    that of sentences k+1..k+1+b (b = `buffer_size`; 0 compares single sentences): a break
    goes there when their cosine distance is strictly above the `breakpoint_percentile`-th
    percentile of all such distances (so lower percentiles give more, smaller chunks).
    Comparing the text before a gap with the text after it (rather than overlapping windows
    centred on each sentence) keeps the largest distance at the topic boundary itself.

    metadata: chunker="semantic", sentences=(a, b) (sentence indices), n_tokens; the pieces
    of a group cut again to fit `max_tokens` also have resplit=True and split_block (as from
    `RecursiveChunker`).
    """

    embedder: Embedder
    breakpoint_percentile: float = 95.0
    max_tokens: int | None = None
    counter: TokenCounter = field(default_factory=WhitespaceCounter)
    buffer_size: int = 1

    def __post_init__(self) -> None:
        if not callable(getattr(self.embedder, "embed", None)):
            raise TypeError(f"SemanticChunker.embedder must have an embed(texts) method, got "
                            f"{type(self.embedder).__name__}")
        p = self.breakpoint_percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) \
                or not 0 <= p <= 100:
            raise ValueError(f"SemanticChunker.breakpoint_percentile must be a number in "
                             f"[0, 100], got {p!r}")
        if self.max_tokens is not None:
            _check_int("SemanticChunker.max_tokens", self.max_tokens, 1)
        _check_int("SemanticChunker.buffer_size", self.buffer_size, 0)
        _check_counter("SemanticChunker", self.counter)

    def split(self, text: str) -> list[Chunk]:
        spans = split_sentences(text)
        chunks = []
        for a, b in self._groups(text, spans):
            span = (spans[a][0], spans[b - 1][1])
            n_tokens = self.counter.count(text[span[0]:span[1]])
            if self.max_tokens is None or n_tokens <= self.max_tokens:
                chunks.append(_chunk(text, span, {"chunker": "semantic", "sentences": (a, b),
                                                  "n_tokens": n_tokens}))
            else:
                chunks.extend(self._resplit(text, span, (a, b)))
        return chunks

    def _groups(self, text: str, spans: list[Span]) -> list[Span]:
        """Sentence index ranges [a, b) between the breakpoints."""
        import numpy as np

        if len(spans) < 2:
            return [(0, len(spans))] if spans else []
        distances = self._distances(text, spans)
        threshold = np.percentile(distances, self.breakpoint_percentile)
        cuts = [0] + [k + 1 for k, d in enumerate(distances) if d > threshold] + [len(spans)]
        return list(zip(cuts[:-1], cuts[1:]))

    def _distances(self, text: str, spans: list[Span]) -> np.ndarray:
        """Cosine distance at each gap k (between sentences k and k+1): sentences k-b..k
        against sentences k+1..k+1+b, where b is buffer_size."""
        sentences, b = [text[s:e] for s, e in spans], self.buffer_size
        left = [" ".join(sentences[max(0, k - b):k + 1]) for k in range(len(sentences) - 1)]
        right = [" ".join(sentences[k + 1:k + 2 + b]) for k in range(len(sentences) - 1)]
        unique = list(dict.fromkeys(left + right))  # with b=0: each sentence once
        vectors = self._embed(unique)
        row = {t: k for k, t in enumerate(unique)}
        lv = vectors[[row[t] for t in left]]
        rv = vectors[[row[t] for t in right]]
        return 1.0 - (lv * rv).sum(axis=1)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """The embedder's rows for `texts`, checked and L2-normalised."""
        import numpy as np

        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"embedder.embed returned an array of shape {vectors.shape} for "
                             f"{len(texts)} texts; expected one row per text")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def _resplit(self, text: str, span: Span, sentences: Span) -> list[Chunk]:
        assert self.max_tokens is not None
        inner = RecursiveChunker(self.max_tokens, self.counter).split(text[span[0]:span[1]])
        return [_chunk(text, (span[0] + c.start, span[0] + c.end), {
            "chunker": "semantic", "sentences": sentences, "n_tokens": c.metadata["n_tokens"],
            "resplit": True, "split_block": c.metadata["split_block"]}) for c in inner]
