"""Structured outputs and tool calls through the official `openai` client against a real
server: `response_format` and vLLM's extras give outputs that jsonschema (the reference)
accepts; every `tool_choice` mode gives the right calls, the same streamed or not. For
`auto` the model's text is forced with a Lark grammar (`structured_outputs.grammar`) that
writes a Hermes `<tool_call>` block, since a random model never would. Real, varied
function schemas come from the Berkeley Function Calling Leaderboard when the shared data
directory is present."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from serve_helpers import CONTEXT, MODEL

jsonschema = pytest.importorskip("jsonschema")

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}
TIME_PARAMS = {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 6}},
               "required": ["tz"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast.",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time.",
                                      "parameters": TIME_PARAMS}},
]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                  "maxItems": 3},
                         "ok": {"type": "boolean"}},
          "required": ["name", "age", "ok"], "additionalProperties": False}


def _streamed(client, **kwargs) -> tuple[str | None, list[dict], str | None, list]:
    """(content, tool calls, finish reason, tool-call deltas) of a streamed chat request."""
    content, calls, finish, deltas = "", {}, None, []
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                deltas.append(d)
                call = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    return content or None, [calls[i] for i in sorted(calls)], finish, deltas


def _calls(message) -> list[dict]:
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in message.tool_calls or []]


def _without_ids(calls: list[dict]) -> list[tuple[str, str]]:
    return [(c["name"], c["arguments"]) for c in calls]


def test_json_schema_response_format(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                   "strict": True}}
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=fmt,
                                       n=3, seed=7, temperature=1.0, max_tokens=80)
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    content, _, finish, _ = _streamed(client, messages=MESSAGES, response_format=fmt, seed=7,
                                      temperature=1.0, max_tokens=80)
    assert content == r.choices[0].message.content and finish == "stop"


def test_json_object_and_vllm_extras(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, seed=1,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    choices = ["yes", "no", "maybe"]
    for extra in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}}):
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10,
                                           extra_body=extra)
        assert r.choices[0].message.content in choices
    pattern = r"[0-9]{3}-[a-z]{2}"
    for extra in ({"guided_regex": pattern}, {"structured_outputs": {"regex": pattern}}):
        r = client.completions.create(model=MODEL, prompt="Code:", max_tokens=20,
                                      extra_body=extra)
        assert re.fullmatch(pattern, r.choices[0].text)
    r = client.completions.create(model=MODEL, prompt="Person:", max_tokens=80, seed=3,
                                  extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)


@pytest.mark.parametrize("seed", [0, 1])
def test_tool_choice_required(client, seed):
    kwargs = dict(messages=MESSAGES, tools=TOOLS, tool_choice="required",
                  parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=100)
    r = client.chat.completions.create(model=MODEL, **kwargs)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = _calls(choice.message)
    assert call["id"].startswith("call_") and call["name"] in PARAMS
    jsonschema.validate(json.loads(call["arguments"]), PARAMS[call["name"]])
    content, calls, finish, deltas = _streamed(client, **kwargs)
    assert (content, _without_ids(calls), finish) == (None, _without_ids([call]), "tool_calls")
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name


def test_tool_choice_named(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    kwargs = dict(messages=MESSAGES, tools=TOOLS, tool_choice=named, temperature=1.0, seed=4,
                  max_tokens=100)
    r = client.chat.completions.create(model=MODEL, **kwargs)
    [call] = _calls(r.choices[0].message)
    assert call["name"] == "get_time" and r.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call["arguments"]), TIME_PARAMS)
    content, calls, finish, deltas = _streamed(client, **kwargs)
    assert (content, _without_ids(calls), finish) == (None, _without_ids([call]), "tool_calls")
    assert deltas[0].function.name == "get_time" and len(deltas) > 1  # arguments in pieces


def _forced_reply_grammar(hf_tokenizer, reply_json: str) -> str:
    """A Lark grammar that writes 'Checking.' and one Hermes tool-call block."""
    start = hf_tokenizer.convert_tokens_to_ids("<tool_call>")
    end = hf_tokenizer.convert_tokens_to_ids("</tool_call>")
    return (f'start: "Checking." <[{start}]> "\\n" "{_lark_escape(reply_json)}" "\\n" '
            f'<[{end}]>')


def _lark_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def test_tool_choice_auto_parses_the_generated_call(client, hf_tokenizer):
    call_json = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}})
    grammar = _forced_reply_grammar(hf_tokenizer, call_json)
    kwargs = dict(messages=MESSAGES, tools=TOOLS, max_tokens=120,
                  extra_body={"structured_outputs": {"grammar": grammar}})
    r = client.chat.completions.create(model=MODEL, **kwargs)  # tool_choice defaults to auto
    message = r.choices[0].message
    assert message.content == "Checking."
    [call] = _calls(message)
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris", "days": 2}
    assert r.choices[0].finish_reason == "tool_calls"
    content, calls, finish, deltas = _streamed(client, tool_choice="auto", **kwargs)
    assert (content, _without_ids(calls), finish) == (
        "Checking.", _without_ids([call]), "tool_calls")
    first, rest = deltas[0], deltas[1:]
    assert (first.type, first.function.name, first.function.arguments) == (
        "function", "get_weather", "")
    assert first.id.startswith("call_")
    assert len(rest) > 3 and all(d.id is None and d.function.name is None for d in rest)


def test_tool_choice_none_leaves_tools_out(client, hf_tokenizer):
    call_json = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}})
    grammar = _forced_reply_grammar(hf_tokenizer, call_json)
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=120,
        extra_body={"structured_outputs": {"grammar": grammar}})
    message = r.choices[0].message
    assert not message.tool_calls and r.choices[0].finish_reason == "stop"
    assert message.content == f"Checking.<tool_call>\n{call_json}\n</tool_call>"
    text = hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(hf_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_tools_are_rendered_for_auto(client, hf_tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                       max_tokens=1)
    text = hf_tokenizer.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=False,
                                            add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(hf_tokenizer(text, add_special_tokens=False)["input_ids"])


BFCL = Path(__file__).resolve().parents[3] / "shared" / "data" / "bfcl"


def _bfcl_cases(limit: int) -> list[dict]:
    path = BFCL / "BFCL_v4_multiple.json"
    if not path.is_file():
        pytest.skip(f"the BFCL data is not here ({path})")
    with path.open() as f:
        return [json.loads(line) for _, line in zip(range(limit), f)]


def test_bfcl_schemas_with_forced_tool_calls(client, hf_tokenizer):
    grammar = pytest.importorskip("llmsys.engine.grammar")
    checked = 0
    for case in _bfcl_cases(6):
        tools, originals = [], {}
        for fn in case["function"]:
            schema = grammar.bfcl_to_json_schema(fn["parameters"])
            originals[fn["name"]] = schema
            tools.append({"type": "function", "function": {
                "name": fn["name"], "description": fn["description"],
                "parameters": grammar.limit_json_schema(schema)}})
        messages = case["question"][0]
        text = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                add_generation_prompt=True)
        if len(hf_tokenizer(text)["input_ids"]) > CONTEXT - 200:
            continue  # leave room to generate in the tiny model's context
        r = client.chat.completions.create(
            model=MODEL, messages=messages, tools=tools, tool_choice="required",
            parallel_tool_calls=False, seed=checked, temperature=1.0, max_tokens=200)
        [call] = _calls(r.choices[0].message)
        jsonschema.validate(json.loads(call["arguments"]), originals[call["name"]])
        checked += 1
    assert checked >= 3
