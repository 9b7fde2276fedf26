"""The tool-call parsers: streaming equals non-streaming for every split of the text, the
expected calls come out, and the forcing schemas accept exactly the right calls (jsonschema
is the reference)."""

from __future__ import annotations

import json
import random

import pytest

from llmsys.serve.tool_parsers import (
    HermesToolParser,
    JsonArrayToolParser,
    NamedToolParser,
    ParsedDelta,
    merge_calls,
    named_tool_schema,
    parse_all,
    required_tools_schema,
)

jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"city": "Paris", "unit": "celsius", "days": [1, 2], "opts": {"a": {"b": "}}"}}}
HERMES_CASES = {
    # text -> (content, [(name, arguments object or raw string)])
    "plain text, no calls": ("Hello there.\n", []),
    "whitespace only": ("  \n", []),
    "content then call": (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
        + json.dumps(WEATHER) + "}\n</tool_call>\n",
        [("get_weather", WEATHER)]),
    "two calls, compact": (
        '<tool_call>{"name":"a","arguments":{"x":1}}</tool_call>\n'
        '<tool_call>{"name":"b","arguments":{}}</tool_call>',
        [("a", {"x": 1}), ("b", {})]),
    "arguments first (resolved at the end tag)": (
        '<tool_call>{"arguments": {"q": "x"}, "name": "search"}</tool_call>',
        [("search", {"q": "x"})]),
    "not a call: stays text": ("a <tool_call>not json</tool_call> b", []),
    "partial tag at the end stays text": ("see <tool_ca", []),
    "unterminated call": ('<tool_call>{"name": "f", "arguments": {"k": "v"}}', [("f", {"k": "v"})]),
    "escapes in name and args": (
        '<tool_call>{"name": "f\\"g", "arguments": {"s": "a\\"}b"}}</tool_call>',
        [('f"g', {"s": 'a"}b'})]),
    "no arguments key": ('<tool_call>{"name": "ping"}</tool_call>', [("ping", {})]),
    "text between calls": (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call> and '
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>', [("a", {}), ("b", {})]),
}
EXPECTED_CONTENT = {
    "plain text, no calls": "Hello there.\n",
    "whitespace only": "  \n",
    "content then call": "Let me check.",
    "two calls, compact": None,
    "arguments first (resolved at the end tag)": None,
    "not a call: stays text": "a <tool_call>not json</tool_call> b",
    "partial tag at the end stays text": "see <tool_ca",
    "unterminated call": None,
    "escapes in name and args": None,
    "no arguments key": None,
    "text between calls": " and",
}


def _feed(parser, pieces: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    out = ParsedDelta()
    for piece in pieces:
        out.extend(parser.feed(piece))
    out.extend(parser.finish())
    calls = merge_calls(out.tool_calls)
    return out.content or None, [(c.name, c.arguments) for c in calls]


def _whole(parser, text: str) -> tuple[str | None, list[tuple[str, str]]]:
    content, calls = parse_all(parser, text)
    return content, [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("case", sorted(HERMES_CASES))
def test_hermes_parses_the_expected_calls(case):
    text, expected = HERMES_CASES[case]
    content, calls = _whole(HermesToolParser(), text)
    assert content == EXPECTED_CONTENT[case]
    assert [name for name, _ in calls] == [name for name, _ in expected]
    for (_, args), (_, want) in zip(calls, expected):
        assert json.loads(args) == want


@pytest.mark.parametrize("case", sorted(HERMES_CASES))
def test_hermes_streaming_equals_whole_at_every_split(case):
    text = HERMES_CASES[case][0]
    whole = _whole(HermesToolParser(), text)
    for i in range(len(text) + 1):  # every boundary once
        assert _feed(HermesToolParser(), [text[:i], text[i:]]) == whole, i
    assert _feed(HermesToolParser(), list(text)) == whole  # one character at a time
    if len(text) <= 60:  # every pair of boundaries
        for i in range(len(text) + 1):
            for j in range(i, len(text) + 1):
                assert _feed(HermesToolParser(), [text[:i], text[i:j], text[j:]]) == whole
    rng = random.Random(0)
    for _ in range(200):  # random splits into many pieces
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _feed(HermesToolParser(), pieces) == whole


def test_hermes_streams_the_name_first_then_argument_fragments():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    parser = HermesToolParser()
    deltas = [parser.feed(ch) for ch in text] + [parser.finish()]
    pieces = [d for out in deltas for d in out.tool_calls]
    assert pieces[0].name == "get_weather" and pieces[0].id and pieces[0].arguments == ""
    fragments = [p.arguments for p in pieces[1:]]
    assert all(p.name is None and p.id is None for p in pieces[1:])
    assert len(fragments) > 5  # arguments arrive as they are generated
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert not any(out.content for out in deltas)  # nothing of the tag leaks as text


def test_hermes_holds_back_a_possible_tag_only():
    parser = HermesToolParser()
    assert parser.feed("Hi <tool").content == "Hi"  # " <tool" may be a tag
    assert parser.feed("box>").content == " <toolbox>"
    assert parser.finish().content == ""


@pytest.mark.parametrize("parallel", [True, False])
def test_json_array_parser_equals_streaming(parallel):
    calls = [{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}},
             {"name": "get_time", "arguments": {"tz": "a]\"}b"}}]
    text = json.dumps(calls if parallel else calls[:1], separators=(",", ":"))
    whole = _whole(JsonArrayToolParser(), text)
    assert [(n, json.loads(a)) for n, a in whole[1]] == [
        (c["name"], c["arguments"]) for c in (calls if parallel else calls[:1])]
    assert whole[0] is None
    for i in range(len(text) + 1):
        assert _feed(JsonArrayToolParser(), [text[:i], text[i:]]) == whole
    assert _feed(JsonArrayToolParser(), list(text)) == whole


def test_named_parser_streams_arguments():
    text = '{"city":"Paris"}'
    whole = _whole(NamedToolParser("get_weather"), text)
    assert whole == (None, [("get_weather", text)])
    parser = NamedToolParser("get_weather")
    first = parser.feed(text[:3]).tool_calls[0]
    assert first.name == "get_weather" and first.id and first.arguments == text[:3]
    assert parser.feed(text[3:]).tool_calls[0].name is None
    assert _feed(NamedToolParser("get_weather"), list(text)) == whole


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},  # no parameters
]


def test_required_schema_accepts_exactly_calls_of_the_tools():
    schema = required_tools_schema(TOOLS, parallel=True)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = [[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
            [{"name": "get_time", "arguments": {}},
             {"name": "get_weather", "arguments": {"city": "Paris"}}]]
    bad = [[], [{"name": "nope", "arguments": {}}],
           [{"name": "get_weather", "arguments": {"city": "Rome"}}],
           [{"name": "get_weather"}], {"name": "get_time", "arguments": {}},
           [{"name": "get_time", "arguments": {}, "extra": 1}]]
    for value in good:
        jsonschema.validate(value, schema)
    for value in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema)
    single = required_tools_schema(TOOLS, parallel=False)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good[1], single)
    jsonschema.validate(good[0], single)


def test_named_schema_is_the_functions_parameters():
    assert named_tool_schema(TOOLS, "get_weather") == TOOLS[0]["function"]["parameters"]
    assert named_tool_schema(TOOLS, "get_time") == {"type": "object", "properties": {}}
