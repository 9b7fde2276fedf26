"""Training data: documents and chats → token examples → packed rows with per-document masks.

An `Example` is a token list plus, per token, whether the model is trained to predict it
(pretraining: every token; SFT: the assistant's tokens only). `pack` lays examples end to end
in rows of `seq_len` tokens without splitting one across rows (one longer than a row is cut
into row-sized pieces); each row carries its documents' ids and positions that restart at 0
per document, and `DocumentMask` lets attention see only earlier tokens of the same document,
so packing never lets one conversation attend to another. Labels are the next token inside
the same document, or `IGNORE_INDEX` (-100) where no loss is taken: prompt, tool results,
document ends and padding.

    examples = [text_example(ids) for ids in ...]        # or chat_example(tokenizer, chat)
    batch = collate(pack(examples, seq_len=512, pad_id=0)[i:j])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmsys.model.tokenizer import Tokenizer

IGNORE_INDEX = -100


@dataclass
class Example:
    ids: list[int]
    trained: list[bool]  # trained[i]: ids[i] is a prediction target (given ids[:i])

    def __post_init__(self) -> None:
        assert len(self.ids) == len(self.trained)


@dataclass
class Row:
    ids: list[int]
    labels: list[int]
    positions: list[int]
    doc_ids: list[int]


def text_example(ids: list[int], eos_id: int | None = None) -> Example:
    """A pretraining document: every token is a target (and the end-of-text token, if given)."""
    ids = ids + ([eos_id] if eos_id is not None else [])
    return Example(ids, [True] * len(ids))


def chat_example(tokenizer: Tokenizer, messages: list[dict],
                 tools: list[dict] | None = None) -> Example:
    """A chat rendered with the tokenizer's template; the assistant turns are the targets.

    Each assistant turn's text is what the template adds between the prompt ending in the
    generation prompt and the conversation including that turn (its content, tool calls and
    end-of-turn token). Tokens whose text starts inside such a span are targets."""
    render = tokenizer.apply_chat_template
    full = render(messages, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], tools=tools, add_generation_prompt=True)
        turn = render(messages[: i + 1], tools=tools)
        if not (turn.startswith(prompt) and full.startswith(turn)):
            raise ValueError(f"the chat template does not render message {i} as an extension "
                             "of the messages before it; cannot find the assistant's tokens")
        spans.append((len(prompt), len(turn)))
    encoding = tokenizer.backend.encode(full, add_special_tokens=False)
    trained = [any(a <= start < b for a, b in spans) for start, _ in encoding.offsets]
    return Example(list(encoding.ids), trained)


def pack(examples: list[Example], seq_len: int, pad_id: int) -> list[Row]:
    """Greedy packing in order: an example goes into the current row if it fits, else the row is
    padded and a new one starts. Examples longer than `seq_len` are cut into pieces."""
    rows: list[Row] = []
    current = Row([], [], [], [])
    for example in examples:
        for start in range(0, len(example.ids), seq_len):
            piece = Example(example.ids[start:start + seq_len],
                            example.trained[start:start + seq_len])
            if len(current.ids) + len(piece.ids) > seq_len:
                rows.append(_padded(current, seq_len, pad_id))
                current = Row([], [], [], [])
            _append(current, piece, doc_id=current.doc_ids[-1] + 1 if current.doc_ids else 0)
    if current.ids:
        rows.append(_padded(current, seq_len, pad_id))
    return rows


def _append(row: Row, example: Example, doc_id: int) -> None:
    n = len(example.ids)
    row.ids += example.ids
    row.labels += [nxt if keep else IGNORE_INDEX
                   for nxt, keep in zip(example.ids[1:], example.trained[1:])] + [IGNORE_INDEX]
    row.positions += range(n)
    row.doc_ids += [doc_id] * n


def _padded(row: Row, seq_len: int, pad_id: int) -> Row:
    n = seq_len - len(row.ids)
    # Each padding token is its own document: it attends to itself only (no empty softmax row).
    first = max(row.doc_ids, default=-1) + 1
    return Row(row.ids + [pad_id] * n, row.labels + [IGNORE_INDEX] * n,
               row.positions + [0] * n, row.doc_ids + list(range(first, first + n)))


def collate(rows: list[Row]) -> dict[str, torch.Tensor]:
    """Rows → (B, T) int64 tensors: input_ids, labels, positions, doc_ids."""
    return {name: torch.tensor([getattr(r, name) for r in rows], dtype=torch.long)
            for name in ("ids", "labels", "positions", "doc_ids")}


class DocumentMask:
    """The attention of a packed batch (the model's KVCache protocol, with no cache): causal,
    inside each document only, and inside the layer's sliding window if it has one.

    Without a window, each document's tokens are one contiguous run of its row (`pack` lays
    them out so), and attention runs per run with a causal kernel: the cost is the sum of
    the squared document lengths, not the squared row length, and no (T, T) mask is built.
    Runs of one token (padding) attend to themselves only, so their output is their value.
    With a window, one masked call per layer over the whole batch."""

    def __init__(self, doc_ids: torch.Tensor, positions: torch.Tensor):
        self.doc_ids, self.positions = doc_ids, positions
        self._runs: list[list[tuple[int, int, bool]]] | None = None
        self._windowed: dict[int, torch.Tensor] = {}  # per window size, shared by layers

    def runs(self) -> list[list[tuple[int, int, bool]]]:
        """Per row, (start, end, alone) of each document's run of tokens; consecutive
        one-token documents are merged into one run with `alone` set."""
        if self._runs is None:
            self._runs = [_runs(row) for row in self.doc_ids.tolist()]
        return self._runs

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor, window: int | None) -> torch.Tensor:
        if window is not None:
            return self._attend_masked(q, k, v, window)
        group = q.shape[2] // k.shape[2]
        rows = []
        for b, runs in enumerate(self.runs()):
            pieces = []
            for start, end, alone in runs:
                if alone:  # one-token documents: a softmax over one key gives its value
                    pieces.append(v[b, start:end].repeat_interleave(group, dim=1))
                    continue
                qs, ks, vs = (t[b, start:end].transpose(0, 1) for t in (q, k, v))
                out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                     enable_gqa=group > 1)
                pieces.append(out.transpose(0, 1))
            rows.append(torch.cat(pieces) if len(pieces) > 1 else pieces[0])
        return torch.stack(rows)  # (B, T, Hq, D)

    def _attend_masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       window: int) -> torch.Tensor:
        if window not in self._windowed:
            doc_ids, positions = self.doc_ids, self.positions
            n = doc_ids.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool, device=doc_ids.device).tril()
            distance = positions[:, :, None] - positions[:, None, :]
            same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
            self._windowed[window] = (same_doc & causal & (distance < window))[:, None]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._windowed[window],
                                             enable_gqa=q.shape[1] != k.shape[1])
        return out.transpose(1, 2)  # (B, T, Hq, D)


def _runs(doc_ids: list[int]) -> list[tuple[int, int, bool]]:
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(doc_ids) + 1):
        if i < len(doc_ids) and doc_ids[i] == doc_ids[start]:
            continue
        if doc_ids[start] in doc_ids[i:]:
            raise ValueError(f"document {doc_ids[start]} is not contiguous in its row; "
                             "pack() lays each document out in one run")
        alone = i - start == 1
        if alone and runs and runs[-1][2]:
            runs[-1] = (runs[-1][0], i, True)
        else:
            runs.append((start, i, alone))
        start = i
    return runs


def read_texts(paths: list[str | os.PathLike], text_field: str = "text") -> Iterator[str]:
    """Documents from text files (one per file) and JSONL files (one per line, `text_field`)."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training data file {path} does not exist")
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    yield _json_field(line, text_field, path, n)
        else:
            yield path.read_text(encoding="utf-8")


def _json_field(line: str, field: str, path: Path, n: int) -> str:
    try:
        value = json.loads(line)[field]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path}:{n}: expected a JSON object with a string {field!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"{path}:{n}: {field!r} must be a string, got {type(value).__name__}")
    return value


def read_chats(path: str | os.PathLike) -> Iterator[dict]:
    """Chats from JSONL: {"messages": [...], "tools": [...] (optional)} per line."""
    path = Path(path)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            chat = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(chat, dict) or not isinstance(chat.get("messages"), list):
            raise ValueError(f"{path}:{n}: expected an object with a 'messages' list")
        for i, message in enumerate(chat["messages"]):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ValueError(f"{path}:{n}: message {i} must be an object with a string "
                                 "'role' (system, user, assistant or tool)")
        yield chat


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """(vocab,) number of text bytes each token stands for; 0 for special tokens. Byte-level
    BPE spells bytes as printable characters; this undoes that mapping (GPT-2's)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    char_of_byte = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in char_of_byte:
            char_of_byte[b] = chr(256 + extra)
            extra += 1
    byte_chars = set(char_of_byte.values())
    special = set(tokenizer.special_tokens_map.values())
    added = tokenizer.backend.get_added_tokens_decoder()
    special |= {t.content for t in added.values() if t.special}
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    for token, i in tokenizer.backend.get_vocab(with_added_tokens=True).items():
        if token in special:
            continue
        is_bytes = all(c in byte_chars for c in token) and i not in added
        lengths[i] = len(token) if is_bytes else len(token.encode("utf-8"))
    return lengths
