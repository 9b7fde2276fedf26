"""Helpers for tests and benchmarks: a ChatML chat template and a tiny tokenizer built on the fly.

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
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# A ChatML template (``<|im_start|>role\n...<|im_end|>\n``) with Hermes-style tool calling.
# Tools go into the system turn as JSON lines inside <tools></tools>; assistant tool calls are
# rendered as <tool_call>{json}</tool_call> blocks; consecutive ``tool`` messages share one user
# turn, each result wrapped in <tool_response></tool_response>. Reasoning (``reasoning_content``)
# is rendered inside <think></think> at the start of an assistant turn.
CHAT_TEMPLATE = """\
{%- macro text(content) -%}
{%- if content is string -%}
{{ content }}
{%- elif content is iterable -%}
{%- for part in content if part.type == 'text' -%}
{{ part.text }}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set system_text = text(messages[0].content) -%}
{%- set conversation = messages[1:] -%}
{%- else -%}
{%- set system_text = none -%}
{%- set conversation = messages -%}
{%- endif -%}
{%- if tools %}
<|im_start|>system
{% if system_text %}
{{ system_text }}

{% endif %}
# Tools

You can call functions to help with the user's request. \
Their signatures are listed as JSON inside <tools></tools>:
<tools>
{% for tool in tools %}
{{ tool | tojson }}
{% endfor %}
</tools>

To call a function, answer with a JSON object holding its name and arguments \
inside <tool_call></tool_call>, one block per call:
<tool_call>
{"name": <function-name>, "arguments": <arguments-as-json-object>}
</tool_call><|im_end|>
{% elif system_text is not none %}
<|im_start|>system
{{ system_text }}<|im_end|>
{% endif %}
{% for message in conversation %}
{% if message.role == 'tool' %}
{% if loop.first or loop.previtem.role != 'tool' %}
<|im_start|>user
{% else %}
{{ '\\n' }}
{%- endif %}
<tool_response>
{{ text(message.content) }}
</tool_response>
{%- if loop.last or loop.nextitem.role != 'tool' %}
<|im_end|>
{% endif %}
{% elif message.role == 'assistant' %}
<|im_start|>assistant
{% if message.reasoning_content %}
<think>
{{ message.reasoning_content }}
</think>

{% endif %}
{{ text(message.content) }}
{%- for call in message.tool_calls or [] %}
{% set fn = call.function if call.function is defined else call %}
{% set args = fn.arguments if fn.arguments is string else fn.arguments | tojson %}
{% if not loop.first or message.content %}{{ '\\n' }}{% endif %}
<tool_call>
{{ '{"name": ' ~ (fn.name | tojson) ~ ', "arguments": ' ~ args ~ '}' }}
</tool_call>
{%- endfor %}
<|im_end|>
{% else %}
<|im_start|>{{ message.role }}
{{ text(message.content) }}<|im_end|>
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Control tokens of the tiny tokenizer; ``decode(skip_special_tokens=True)`` drops them."""

MARKUP_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
"""Added tokens that are never split but, as in Qwen, survive ``skip_special_tokens=True``."""

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


def _train_backend(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE and append the added tokens at the end of the vocabulary."""
    n_added = len(SPECIAL_TOKENS) + len(MARKUP_TOKENS)
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_bytes + n_added:
        raise ValueError(f"vocab_size must be at least {n_bytes + n_added}, got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    trained = backend.get_vocab_size()
    if trained != vocab_size - n_added:
        raise ValueError(f"the built-in corpus supports vocab_size up to {trained + n_added}")
    backend.add_tokens([_added(token, special=True) for token in SPECIAL_TOKENS])
    backend.add_tokens([_added(token, special=False) for token in MARKUP_TOKENS])
    return backend


def _added(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False)


def _tokenizer_config() -> dict:
    # bos_token is null, as in Qwen's ChatML models: nothing is prepended when encoding, so
    # encode(text) is the same with and without add_special_tokens, and the template needs no BOS.
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def make_tiny_tokenizer(path: str | os.PathLike, vocab_size: int = 512) -> None:
    """Write a tiny byte-level BPE tokenizer (tokenizer.json, tokenizer_config.json) to ``path``.

    The result is deterministic for a given Python version (the corpus includes standard-library
    docstrings). The vocabulary has exactly ``vocab_size`` entries: the BPE vocabulary first, then
    ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` (special) and the tool/think markup tokens.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    backend = _train_backend(vocab_size)
    backend.save(str(directory / "tokenizer.json"))
    config = json.dumps(_tokenizer_config(), indent=2, ensure_ascii=False)
    (directory / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")


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
