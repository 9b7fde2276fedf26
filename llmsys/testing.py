"""Helpers for tests and benchmarks: a tiny tokenizer and random-weight checkpoints, made here.

Nothing here downloads anything. ``make_tiny_tokenizer`` trains a small byte-level BPE tokenizer on
a fixed corpus (standard-library docstrings plus a few fixed sentences) and writes it in the Hugging
Face layout, so the same directory loads in both ``llmsys`` and ``transformers``.
"""

from __future__ import annotations

import collections
import functools
import inspect
import json
import os
import textwrap
from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmsys.train.tokenizer import (  # noqa: F401  (re-exported for tests)
    CHAT_TEMPLATE,
    MARKUP_TOKENS,
    SPECIAL_TOKENS,
    save_tokenizer,
    train_tokenizer,
)

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "You are a helpful assistant. The user asks a question and the assistant answers it.",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "The weather in Paris is sunny, 21 degrees. Tomorrow it will rain in London.",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "Café crème, naïve résumé, über große Straße.",
    "Привет, мир! 你好，世界。",
    "Emoji: 😀 🚀 👍🏽 ❤️",
)
_DOC_SOURCES = (
    json,
    json.dumps,
    json.loads,
    json.JSONEncoder,
    collections,
    collections.Counter,
    collections.namedtuple,
    collections.deque,
    functools,
    functools.reduce,
    functools.lru_cache,
    functools.partial,
    functools.wraps,
    textwrap.TextWrapper,
)


def _corpus() -> list[str]:
    """The fixed training corpus: standard-library docstrings plus fixed sentences (about 15 KB)."""
    docs = [inspect.getdoc(source) or "" for source in _DOC_SOURCES]
    return docs + list(_SENTENCES)


def make_tiny_tokenizer(path: str | os.PathLike, vocab_size: int = 512) -> None:
    """Write a tiny byte-level BPE tokenizer (tokenizer.json, tokenizer_config.json) to ``path``.

    The result is deterministic for a given Python version (the corpus includes standard-library
    docstrings). The vocabulary has exactly ``vocab_size`` entries: the BPE vocabulary first, then
    ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` (special) and the tool/think markup tokens.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    backend = train_tokenizer(_corpus(), vocab_size, split_digits=False)
    save_tokenizer(backend, directory)


# ---- tiny random-weight checkpoints -------------------------------------------------------

# Keys each family needs beyond the common ones (HF config.json names).
_FAMILY_DEFAULTS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False},
    "qwen3": {"use_sliding_window": False},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "norm_topk_prob": True, "use_sliding_window": False},
}


# The ~110M-parameter Llama shape the benchmarks share (overrides for make_tiny_checkpoint).
LLAMA_110M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, intermediate_size=2048, vocab_size=16384,
                  max_position_embeddings=4096)


def tiny_hf_config(family: str, vocab_size: int, **overrides: object) -> dict:
    """A small config.json dict for `family` (llama, mistral, qwen2, qwen3, mixtral, qwen3_moe),
    in the long-standing layout (top-level rope_theta, rope_scaling); overrides win."""
    if family not in _FAMILY_DEFAULTS:
        raise ValueError(f"unknown family {family!r}; allowed: {sorted(_FAMILY_DEFAULTS)}")
    config = {
        "model_type": family, "vocab_size": vocab_size, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        **_FAMILY_DEFAULTS[family],
    }
    config.update(overrides)
    return config


def init_random_weights(model: torch.nn.Module, seed: int) -> None:
    """Weights with O(1) activations, so logits are peaked enough to compare greedy decoding:
    norms ~ 1 + N(0, 0.1), biases ~ N(0, 0.1), embeddings ~ N(0, 1), matrices ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                value = 1 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif "embed" in name:
                value = noise
            else:
                value = noise / p.shape[-1] ** 0.5
            p.copy_(value)


def make_tiny_checkpoint(family: str, path: str | os.PathLike, *, seed: int = 0,
                         dtype: str = "float32", max_shard_bytes: int | None = None,
                         **overrides: object) -> Path:
    """Write a random-weight checkpoint of `family` with a tiny BPE tokenizer and chat
    template to `path`. `overrides` are HF config.json keys (e.g. num_key_value_heads=1,
    head_dim=24, rope_scaling={...}, sliding_window=8, tie_word_embeddings=True)."""
    from llmsys.model.checkpoint import DTYPES, save_checkpoint
    from llmsys.model.config import ModelConfig
    from llmsys.model.transformer import Transformer

    out = Path(path)
    make_tiny_tokenizer(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    vocab_size = overrides.pop("vocab_size", tok.get_vocab_size(with_added_tokens=True))
    if vocab_size < tok.get_vocab_size(with_added_tokens=True):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's "
                         f"{tok.get_vocab_size(with_added_tokens=True)} tokens")
    hf_config = tiny_hf_config(family, vocab_size, bos_token_id=None, eos_token_id=eos[0],
                               dtype=dtype, **overrides)
    model = Transformer(ModelConfig.from_hf(hf_config))
    init_random_weights(model, seed)
    save_checkpoint(model.to(DTYPES[dtype]), hf_config, out, max_shard_bytes=max_shard_bytes)
    generation_config = {"eos_token_id": eos, "pad_token_id": eos[1]}
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    return out
