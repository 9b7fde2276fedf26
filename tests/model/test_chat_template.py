"""Chat template rendering: llmsys output must equal transformers' apply_chat_template output."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from llmsys.errors import TemplateError
from llmsys.model.tokenizer import Tokenizer
from llmsys.testing import CHAT_TEMPLATE

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city — température included.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a time zone.",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]

SIMPLE = [{"role": "user", "content": "Hello! 🙂"}]

WITH_SYSTEM = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
]

TOOL_CONVERSATION = [
    {"role": "system", "content": "Use tools when useful."},
    {"role": "user", "content": "Weather and time in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I need two tools.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "sunny"}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    {"role": "assistant", "content": "Sunny, 21 °C, and it is 14:05.", "reasoning": "Easy."},
    {"role": "user", "content": "Thanks"},
]

CONVERSATIONS = {"simple": SIMPLE, "system": WITH_SYSTEM, "tools": TOOL_CONVERSATION}

# A Llama-3-style template: header tokens, bos_token, tools as indented JSON, alternation check.
LLAMA3_TEMPLATE = """\
{{- bos_token }}
{%- if date_string is not defined %}{% set date_string = "1 Jan 2025" %}{% endif %}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
<|start_header_id|>system<|end_header_id|>

Today Date: {{ date_string }}

{% if tools is not none %}
You can call these functions:

{% for tool in tools %}
{{ tool | tojson(indent=4) }}

{% endfor %}
{% endif %}
{{ system_message }}<|eot_id|>
{% set ns = namespace(expect='user') %}
{% for message in messages %}
{% if message.role in ['user', 'assistant'] %}
{% if message.role != ns.expect %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{% endif %}
{% set ns.expect = 'assistant' if message.role == 'user' else 'user' %}
{% else %}
{% set ns.expect = 'assistant' %}
{% endif %}
<|start_header_id|>{{ 'ipython' if message.role == 'tool' else message.role }}<|end_header_id|>

{% if message.tool_calls is defined %}
{% for call in message.tool_calls %}
{{ {'name': call.function.name, 'parameters': call.function.arguments} | tojson }}
{% endfor %}
{% else %}
{{ message.content | trim }}
{% endif %}
<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"""

# Exercises {% generation %} blocks, loop controls and tojson options.
GENERATION_TEMPLATE = """\
{%- if meta is defined %}{{ meta | tojson(sort_keys=true, separators=(',', ':')) }}
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- if max_turns is defined and loop.index > max_turns %}{% break %}{% endif %}
{%- if message.role == 'assistant' %}
<|im_start|>assistant
{% generation %}{{ message.content }}<|im_end|>{% endgeneration %}

{%- else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

PLAIN_CONVERSATION = [
    {"role": "system", "content": "ignored by the generation template"},
    {"role": "user", "content": "One"},
    {"role": "assistant", "content": "Two"},
    {"role": "user", "content": "Three"},
    {"role": "assistant", "content": "Four"},
]


def _variant(tiny_dir: Path, dest: Path, jinja_file: str | None = None, **config: object) -> Path:
    """Copy the tiny tokenizer to ``dest`` with tokenizer_config fields replaced."""
    shutil.copytree(tiny_dir, dest)
    path = dest / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(config)
    path.write_text(json.dumps(data), encoding="utf-8")
    if jinja_file is not None:
        (dest / "chat_template.jinja").write_text(jinja_file, encoding="utf-8")
    return dest


def _both(directory: Path) -> tuple[Tokenizer, object]:
    return Tokenizer.from_dir(directory), transformers.AutoTokenizer.from_pretrained(directory)


# --------------------------------------------------------------------------------------------
# The built-in ChatML template


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chatml_matches_transformers(tok, hf, name, with_tools, add_generation_prompt) -> None:
    messages = CONVERSATIONS[name]
    tools = TOOLS if with_tools else None
    ours = tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt
    )
    theirs = hf.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_chatml_layout(tok) -> None:
    text = tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nUse tools when useful.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) + "\n" in text
    assert (
        "<|im_start|>assistant\n<think>\nI need two tools.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert (
        '<|im_start|>user\n<tool_response>\n{"temp": 21, "sky": "sunny"}\n</tool_response>\n'
        "<tool_response>\n14:05\n</tool_response><|im_end|>\n"
    ) in text
    assert text.endswith("<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n")


def test_chatml_without_system_or_tools(tok) -> None:
    text = tok.apply_chat_template(SIMPLE, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHello! 🙂<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_tokenize_matches_transformers(tok, hf, name) -> None:
    messages = CONVERSATIONS[name]
    ours = tok.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=True)
    theirs = hf.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ours == theirs
    assert ours[0] == tok.token_to_id("<|im_start|>")
    assert tok.decode(ours, skip_special_tokens=False) == tok.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True
    )


def test_messages_are_not_modified(tok) -> None:
    messages = json.loads(json.dumps(TOOL_CONVERSATION))
    tok.apply_chat_template(messages, tools=TOOLS)
    assert messages == TOOL_CONVERSATION


# --------------------------------------------------------------------------------------------
# Templates that exercise other features


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_llama3_style_template(tiny_dir, tmp_path, with_tools, add_generation_prompt) -> None:
    directory = _variant(
        tiny_dir, tmp_path / "llama", chat_template=LLAMA3_TEMPLATE, bos_token="<|endoftext|>"
    )
    tok, hf = _both(directory)
    tools = TOOLS if with_tools else None
    for template_vars in ({}, {"date_string": "9 Mar 2026"}):
        ours = tok.apply_chat_template(
            TOOL_CONVERSATION,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            template_vars=template_vars,
        )
        theirs = hf.apply_chat_template(
            TOOL_CONVERSATION,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **template_vars,
        )
        assert ours == theirs
        assert ours.startswith("<|endoftext|><|start_header_id|>system")
        assert ("\n    " in ours) == with_tools  # tojson(indent=4)


def test_raise_exception_becomes_template_error(tiny_dir, tmp_path) -> None:
    directory = _variant(tiny_dir, tmp_path / "llama", chat_template=LLAMA3_TEMPLATE)
    tok, hf = _both(directory)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    message = "Conversation roles must alternate user/assistant/user/assistant/..."
    with pytest.raises(TemplateError) as ours:
        tok.apply_chat_template(bad)
    assert str(ours.value) == message
    with pytest.raises(jinja2.TemplateError) as theirs:
        hf.apply_chat_template(bad, tokenize=False)
    assert str(theirs.value) == message


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("template_vars", [{}, {"max_turns": 3}, {"meta": {"b": "ü", "a": [1]}}])
def test_generation_and_loop_controls(tiny_dir, tmp_path, add_generation_prompt, template_vars):
    directory = _variant(tiny_dir, tmp_path / "gen", chat_template=GENERATION_TEMPLATE)
    tok, hf = _both(directory)
    ours = tok.apply_chat_template(
        PLAIN_CONVERSATION, add_generation_prompt=add_generation_prompt, template_vars=template_vars
    )
    theirs = hf.apply_chat_template(
        PLAIN_CONVERSATION,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **template_vars,
    )
    assert ours == theirs
    assert "ignored" not in ours
    assert ("Four" in ours) == ("max_turns" not in template_vars)
    if "meta" in template_vars:
        assert ours.startswith('{"a":[1],"b":"ü"}\n')


def test_generation_masks_agree_with_rendering(tiny_dir, tmp_path) -> None:
    directory = _variant(tiny_dir, tmp_path / "gen", chat_template=GENERATION_TEMPLATE)
    tok, hf = _both(directory)
    ids = tok.apply_chat_template(PLAIN_CONVERSATION, tokenize=True)
    out = hf.apply_chat_template(
        PLAIN_CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ids == out["input_ids"]
    masked = [i for i, m in zip(ids, out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked, skip_special_tokens=False) == "Two<|im_end|>Four<|im_end|>"


def test_tools_and_documents_are_defined_as_none(tiny_dir, tmp_path) -> None:
    # transformers always passes tools and documents (None when not given).
    template = "{{ tools is defined }}/{{ tools is none }}/{{ documents is none }}/{{ eos_token }}"
    directory = _variant(tiny_dir, tmp_path / "t", chat_template=template)
    tok, hf = _both(directory)
    ours = tok.apply_chat_template(SIMPLE)
    assert ours == hf.apply_chat_template(SIMPLE, tokenize=False)
    assert ours == "True/True/True/<|im_end|>"


def test_template_vars_override_special_tokens(tiny_dir, tmp_path) -> None:
    template = "{{ eos_token }}|{{ pad_token }}|{{ enable_thinking }}"
    directory = _variant(tiny_dir, tmp_path / "t", chat_template=template)
    tok, hf = _both(directory)
    variables = {"eos_token": "<E>", "enable_thinking": False}
    ours = tok.apply_chat_template(SIMPLE, template_vars=variables)
    assert ours == hf.apply_chat_template(SIMPLE, tokenize=False, **variables)
    assert ours == "<E>|<|endoftext|>|False"


def test_strftime_now(tiny_dir, tmp_path) -> None:
    directory = _variant(tiny_dir, tmp_path / "t", chat_template="{{ strftime_now('%Y') }}")
    tok = Tokenizer.from_dir(directory)
    assert tok.apply_chat_template(SIMPLE) == datetime.now().strftime("%Y")


# --------------------------------------------------------------------------------------------
# Where templates come from


def test_jinja_file_takes_priority(tiny_dir, tmp_path) -> None:
    directory = _variant(
        tiny_dir, tmp_path / "t", jinja_file="FILE {{ messages[0].content }}", chat_template="CFG"
    )
    tok, hf = _both(directory)
    assert tok.apply_chat_template(SIMPLE) == hf.apply_chat_template(SIMPLE, tokenize=False)
    assert tok.apply_chat_template(SIMPLE) == "FILE Hello! 🙂"


def test_named_templates(tiny_dir, tmp_path) -> None:
    templates = [
        {"name": "default", "template": "default:{{ messages | length }}"},
        {"name": "tool_use", "template": "tools:{{ tools | length }}"},
    ]
    directory = _variant(tiny_dir, tmp_path / "t", chat_template=templates)
    tok, hf = _both(directory)
    assert tok.chat_templates == {item["name"]: item["template"] for item in templates}
    assert tok.chat_template == templates[0]["template"]
    for tools in (None, TOOLS):
        ours = tok.apply_chat_template(SIMPLE, tools=tools)
        assert ours == hf.apply_chat_template(SIMPLE, tools=tools, tokenize=False)
    assert tok.apply_chat_template(SIMPLE, tools=TOOLS) == "tools:2"


def test_named_templates_without_default(tiny_dir, tmp_path) -> None:
    templates = [{"name": "tool_use", "template": "x"}]
    directory = _variant(tiny_dir, tmp_path / "t", chat_template=templates)
    tok = Tokenizer.from_dir(directory)
    with pytest.raises(TemplateError, match="no default chat template.*tool_use"):
        tok.apply_chat_template(SIMPLE)
    assert tok.apply_chat_template(SIMPLE, tools=TOOLS) == "x"


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{% if %}", "syntax error on line 1"),
        ("{{ messages[0].content + 1 }}", "failed to render: TypeError"),
        ("{{ messages.__class__.__name__ }}", "SecurityError: access to attribute"),
        ("{{ missing.x }}", "UndefinedError"),
        ("{% set ns = namespace(_x=1) %}", "underscore"),
        ("{% set x = messages.append(1) %}", "failed to render: SecurityError"),
    ],
)
def test_template_errors(tiny_dir, tmp_path, template: str, match: str) -> None:
    directory = _variant(tiny_dir, tmp_path / "t", chat_template=template)
    tok = Tokenizer.from_dir(directory)
    with pytest.raises(TemplateError, match=match):
        tok.apply_chat_template(SIMPLE)


def test_bad_inputs(tok) -> None:
    with pytest.raises(TemplateError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(TemplateError, match="messages must be dicts"):
        tok.apply_chat_template(["hello"])
    with pytest.raises(TemplateError, match="tools must be"):
        tok.apply_chat_template(SIMPLE, tools=[len])
    with pytest.raises(TemplateError, match="may not set messages"):
        tok.apply_chat_template(SIMPLE, template_vars={"messages": []})


def test_builtin_template_constant(tok) -> None:
    assert tok.chat_template == CHAT_TEMPLATE
