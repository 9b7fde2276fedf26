"""Byte-level BPE tokenizer training: `tokenizer.json` + `tokenizer_config.json` + chat template.

    python -m llmsys.cli train tokenizer --input corpus.jsonl --vocab-size 4096 --out DIR

`train_tokenizer(texts, vocab_size)` trains a byte-level BPE with the `tokenizers` library: any
string round-trips exactly (every byte has a token), digits are split one per token (numbers are
then copied digit by digit, which a small model learns far more easily than arbitrary chunks),
a space before a capital letter is a token of its own (so a name is the same tokens after a
space, a quote or a newline: "of Kadalvel?" and `{"query": "Kadalvel"}` share "Kadalvel"'s
tokens, and a model copies the name from a question into a tool call token for token), and
the chat-format tokens are appended at the end of the vocabulary: `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` as special tokens and the tool/think markup (`<tool_call>`, ...)
as added tokens that survive `skip_special_tokens` (as in Qwen). `save_tokenizer` writes the
directory `Tokenizer.from_dir` (and `transformers.AutoTokenizer`) loads, with the ChatML +
Hermes-tool-call template below, so the server's `tool_choice="auto"` parser reads the calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

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

_FULL_TOOLS = CHAT_TEMPLATE[CHAT_TEMPLATE.index("# Tools"):CHAT_TEMPLATE.index("<|im_end|>")]
_COMPACT_TOOLS = """\
# Tools
{% for tool in tools %}
{% set fn = tool.function if tool.function is defined else tool %}
{% set params = fn.parameters.properties if fn.parameters and fn.parameters.properties else {} %}
- {{ fn.name }}({{ params | list | join(', ') }}): {{ fn.description or '' }}
{% endfor %}
Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>."""
COMPACT_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(_FULL_TOOLS, _COMPACT_TOOLS)
"""The same chat format with the tools listed one line each (name, parameters, description):
a tiny model reads ~60 tokens of tool list instead of ~300 of JSON schemas."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Control tokens; ``decode(skip_special_tokens=True)`` drops them."""

MARKUP_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
"""Added tokens that are never split but, as in Qwen, survive ``skip_special_tokens=True``."""

EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, split_digits: bool = True,
                    split_capitals: bool = True, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE of exactly `vocab_size` tokens (BPE merges + the chat tokens).
    `split_digits`: one token per digit. `split_capitals`: a space before a capital letter is
    its own token, so capitalised words tokenize the same wherever they stand."""
    n_added = len(SPECIAL_TOKENS) + len(MARKUP_TOKENS)
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_bytes + n_added:
        raise ValueError(f"vocab_size must be at least {n_bytes + n_added} (256 bytes + "
                         f"{n_added} chat tokens), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    space_before_capital = pre_tokenizers.Split(Regex(r" (?=\p{Lu})"), behavior="isolated")
    steps = [space_before_capital] if split_capitals else []
    steps += [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*steps, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_added, min_frequency=min_frequency,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    trained = backend.get_vocab_size()
    if trained != vocab_size - n_added:
        raise ValueError(f"the corpus supports vocab_size up to {trained + n_added} "
                         f"(asked for {vocab_size}); give more text or a smaller vocabulary")
    backend.add_tokens([_added(token, special=True) for token in SPECIAL_TOKENS])
    backend.add_tokens([_added(token, special=False) for token in MARKUP_TOKENS])
    return backend


def _added(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False)


def tokenizer_config(model_max_length: int, chat_template: str = CHAT_TEMPLATE) -> dict:
    """tokenizer_config.json. bos_token is null, as in Qwen's ChatML models: nothing is
    prepended when encoding, so encode(text) is the same with and without special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }


def save_tokenizer(backend: Tokenizer, path: str | os.PathLike, *, model_max_length: int = 4096,
                   chat_template: str = CHAT_TEMPLATE) -> Path:
    """Write tokenizer.json and tokenizer_config.json to `path`."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    backend.save(str(out / "tokenizer.json"))
    config = json.dumps(tokenizer_config(model_max_length, chat_template), indent=2,
                        ensure_ascii=False)
    (out / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
    return out


def eos_and_pad_ids(backend: Tokenizer) -> tuple[int, int]:
    return backend.token_to_id(EOS_TOKEN), backend.token_to_id(PAD_TOKEN)
