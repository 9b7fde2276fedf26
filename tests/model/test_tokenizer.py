"""Tests for llmsys.model.tokenizer: loading, encode/decode parity with transformers, streaming."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from llmsys.errors import CheckpointError, TemplateError
from llmsys.model.tokenizer import IncrementalDetokenizer, Tokenizer
from llmsys.testing import make_tiny_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "",
    "Hello, world!",
    "  leading spaces and\ttabs\nnew lines\r\n",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|>",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    "<think>hmm</think>answer",
    "Café crème, naïve résumé — ünïcödé",
    "Emoji 🙂🚀👍🏽 and ❤️ flags 🇫🇷",
    "中文字符和日本語のテキスト、한국어",
    "<|im_start",
]


def _copy(tiny_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_dir, dest)
    return dest


def _update_config(directory: Path, **fields: object) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(fields)
    path.write_text(json.dumps(config), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# make_tiny_tokenizer


def test_make_tiny_tokenizer_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    make_tiny_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes()


@pytest.mark.parametrize("vocab_size", [300, 512, 700])
def test_make_tiny_tokenizer_vocab_size(tmp_path: Path, vocab_size: int) -> None:
    make_tiny_tokenizer(tmp_path, vocab_size=vocab_size)
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.vocab_size == vocab_size
    assert tok.token_to_id("</think>") == vocab_size - 1


def test_make_tiny_tokenizer_rejects_tiny_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        make_tiny_tokenizer(tmp_path, vocab_size=100)


# --------------------------------------------------------------------------------------------
# Loading and special tokens


def test_special_tokens(tok: Tokenizer, hf) -> None:
    assert tok.vocab_size == len(hf) == 512
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_ids == [hf.eos_token_id]
    assert tok.pad_token_id == hf.pad_token_id
    assert tok.special_tokens_map == hf.special_tokens_map
    assert tok.chat_template == hf.chat_template


def test_token_id_lookup(tok: Tokenizer, hf) -> None:
    for token in ("<|im_start|>", "<tool_call>", "Ġthe", "a"):
        i = tok.token_to_id(token)
        assert i == hf.convert_tokens_to_ids(token)
        assert tok.id_to_token(i) == token
    assert tok.token_to_id("no-such-token") is None
    assert tok.id_to_token(10**6) is None


def test_special_token_dict_form(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    eos = {"__type": "AddedToken", "content": "<|endoftext|>", "special": True}
    _update_config(directory, eos_token=eos, bos_token={"content": "<|im_start|>"})
    tok = Tokenizer.from_dir(directory)
    assert tok.eos_token == "<|endoftext|>"
    assert tok.bos_token_id == tok.token_to_id("<|im_start|>")


def test_generation_config_eos_ids_merged(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    base = Tokenizer.from_dir(directory)
    im_end, endoftext = base.token_to_id("<|im_end|>"), base.token_to_id("<|endoftext|>")
    config = {"eos_token_id": [endoftext, im_end]}
    (directory / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert Tokenizer.from_dir(directory).eos_token_ids == [im_end, endoftext]
    (directory / "generation_config.json").write_text('{"eos_token_id": 7}', encoding="utf-8")
    assert Tokenizer.from_dir(directory).eos_token_ids == [im_end, 7]


def test_special_tokens_only_in_config_are_added(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    _update_config(directory, bos_token="<s>", image_token="<img>", extra_special_tokens=["<x>"])
    tok = Tokenizer.from_dir(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    text = "a <img> <x> <s> b"
    assert tok.encode(text) == hf.encode(text)
    assert tok.vocab_size == len(hf) == 515
    assert tok.special_tokens_map == hf.special_tokens_map
    ids = tok.encode(text)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_added_tokens_decoder_and_legacy_special_tokens_map(tiny_dir: Path, tmp_path: Path):
    directory = _copy(tiny_dir, tmp_path / "t")
    legacy = {"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(legacy), encoding="utf-8")
    tok = Tokenizer.from_dir(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert tok.special_tokens_map == hf.special_tokens_map
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|im_start|>"
    # With added_tokens_decoder present, transformers ignores special_tokens_map.json.
    entry = {"content": "<zz>", "special": False, "normalized": False}
    _update_config(directory, added_tokens_decoder={"600": entry})
    tok = Tokenizer.from_dir(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert tok.special_tokens_map == hf.special_tokens_map
    assert tok.eos_token == "<|im_end|>"
    assert tok.encode("a<zz>b") == hf.encode("a<zz>b")
    assert tok.encode("<zz>") == [512]
    assert tok.decode([512]) == "<zz>"


# --------------------------------------------------------------------------------------------
# Encode / decode


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(tok: Tokenizer, hf, text: str, add_special_tokens) -> None:
    expected = hf.encode(text, add_special_tokens=add_special_tokens)
    assert tok.encode(text, add_special_tokens=add_special_tokens) == expected


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trip(tok: Tokenizer, hf, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    for skip in (True, False):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_special_tokens_are_single_ids(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>user<tool_call>x</tool_call><|im_end|>")
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert ids[-1] == tok.token_to_id("<|im_end|>")
    assert tok.token_to_id("<tool_call>") in ids
    # Control tokens are dropped by skip_special_tokens; tool markup survives, as in Qwen.
    assert tok.decode(ids) == "user<tool_call>x</tool_call>"


def test_bos_from_post_processor(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    bos_id = Tokenizer.from_dir(directory).token_to_id("<|endoftext|>")
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
    seq = {"Sequence": {"id": "A", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, seq],
        "pair": [bos, seq, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [bos_id], "tokens": ["<|endoftext|>"]}
        },
    }
    (directory / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    _update_config(directory, bos_token="<|endoftext|>")
    tok = Tokenizer.from_dir(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    for text in ("", "hello"):
        assert tok.encode(text) == hf.encode(text)
        assert tok.encode(text)[0] == bos_id == tok.bos_token_id
        plain = tok.encode(text, add_special_tokens=False)
        assert plain == hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("flags", [{"add_bos_token": True}, {"add_eos_token": True}])
def test_add_bos_token_flag_ignored_like_transformers(tiny_dir: Path, tmp_path: Path, flags):
    # transformers 5 drops add_bos_token/add_eos_token when tokenizer.json exists: the
    # tokenizer.json post-processor alone decides what encode(add_special_tokens=True) adds.
    directory = _copy(tiny_dir, tmp_path / "t")
    _update_config(directory, bos_token="<|endoftext|>", **flags)
    tok = Tokenizer.from_dir(directory)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == hf.encode("hello") == plain


# --------------------------------------------------------------------------------------------
# IncrementalDetokenizer


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.push(i) for i in ids]


@pytest.mark.parametrize("text", [t for t in TEXTS if t])
def test_incremental_pushes_concatenate_to_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    pieces = _stream(IncrementalDetokenizer(tok), ids)
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


def test_incremental_holds_back_split_characters(tok: Tokenizer) -> None:
    text = "🙂🚀 中文"
    ids = tok.encode(text)
    partial = [i for i in ids if tok.decode([i]).endswith("\ufffd")]
    assert partial, "the test text should contain characters split across tokens"
    pieces = _stream(IncrementalDetokenizer(tok), ids)
    assert "" in pieces
    assert "".join(pieces) == text
    assert all(piece == "" or piece.isprintable() for piece in pieces)


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_with_prompt_and_special_tokens(tok: Tokenizer, skip: bool) -> None:
    prompt = tok.encode("<|im_start|>user\nHi 🙂<|im_end|>\n<|im_start|>assistant\n")
    new = tok.encode("Bonjour — ça va? 👍🏽<|im_end|>")
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt, skip_special_tokens=skip)
    text = "".join(_stream(detok, new))
    assert text == tok.decode(new, skip_special_tokens=skip)
    assert detok.flush() == ""


def test_incremental_random_ids_with_flush(tok: Tokenizer) -> None:
    rng = random.Random(1234)
    for _ in range(20):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        detok = IncrementalDetokenizer(tok)
        pieces = _stream(detok, ids)
        assert "".join(pieces) + detok.flush() == tok.decode(ids)
        assert not any(piece.endswith("\ufffd") for piece in pieces)


def test_incremental_flush_returns_partial_character(tok: Tokenizer) -> None:
    ids = tok.encode("ok 🚀")
    detok = IncrementalDetokenizer(tok)
    text = "".join(_stream(detok, ids[:-1]))
    assert text == "ok "
    assert detok.flush() == tok.decode(ids[:-1])[len(text) :]


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        Tokenizer.from_dir(missing)
    assert str(missing) in str(info.value)


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CheckpointError, match="has no tokenizer.json") as info:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_corrupt_tokenizer_json(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    (directory / "tokenizer.json").write_text('{"model": ', encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_dir(directory)


@pytest.mark.parametrize("content", ['{"eos_token": "<|im_end|>",', "[1, 2]"])
def test_corrupt_tokenizer_config(tiny_dir: Path, tmp_path: Path, content: str) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    (directory / "tokenizer_config.json").write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer_config.json.*expected a JSON object"):
        Tokenizer.from_dir(directory)


def test_corrupt_generation_config(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    (directory / "generation_config.json").write_text('{"eos_token_id": "x"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="eos_token_id"):
        Tokenizer.from_dir(directory)


def test_no_chat_template(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t")
    _update_config(directory, chat_template=None)
    tok = Tokenizer.from_dir(directory)
    assert tok.chat_template is None
    with pytest.raises(TemplateError, match="has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
