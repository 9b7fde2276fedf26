"""Tool calls out of generated text, incrementally: the same parser serves streaming and not.

Three parsers, one per `tool_choice` mode, all with `feed(text) -> ParsedDelta` and
`finish() -> ParsedDelta`:

- `HermesToolParser` (`auto`): the model writes `<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>` blocks among ordinary text. Text that may be the start of a `<tool_call>` tag
  is held back. Once a block's body reads `{"name": "<string>", "arguments":` the call is
  committed: its name goes out, then the arguments in fragments as they arrive (their trailing
  `}` and whitespace are held back, since one `}` closes the outer object). A body in another
  shape waits for its end tag; if it is then a JSON object with a string `name` (and object
  `arguments`) it is a call, otherwise it stays text.
- `JsonArrayToolParser` (`required`): the output is constrained to a JSON array of
  `{"name", "arguments"}` objects; each item is parsed like a Hermes body.
- `NamedToolParser` (a named function): the output is that function's arguments.

A non-streaming response runs the very parser a stream does, on the whole text at once
(`parse_all`), so both give the same content and calls for any split of the text: the
tests feed every text split at every possible boundary. When there are calls, whitespace
at the end of the content is dropped (an empty content is None in a response); a reply
without calls keeps its text exactly.

`required_tools_schema` and `named_tool_schema` are the JSON schemas that constrain the
output for `required` and named tool choices.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

START_TAG, END_TAG = "<tool_call>", "</tool_call>"
# A committed body: `{"name": "<complete JSON string>", "arguments":` (or "parameters").
_COMMIT = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"'
                     r"\s*:\s*")
_HELD_AFTER_ARGUMENTS = "} \t\r\n"


@dataclass
class ToolCallDelta:
    """A piece of one tool call: the first piece has id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def extend(self, other: ParsedDelta) -> None:
        self.content += other.content
        self.tool_calls += other.tool_calls


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def merge_calls(deltas: list[ToolCallDelta]) -> list[ToolCall]:
    """Join the pieces of each call (by index) into whole calls."""
    calls: dict[int, ToolCall] = {}
    for d in deltas:
        if d.index not in calls:
            calls[d.index] = ToolCall(d.id or new_call_id(), d.name or "", "")
        calls[d.index].arguments += d.arguments
    return [calls[i] for i in sorted(calls)]


class _Content:
    """Text outside tool calls. Trailing whitespace is held until more text follows; at the
    end it is kept only if there was no call (so a reply without calls is returned as is)."""

    def __init__(self) -> None:
        self.pending = ""

    def add(self, text: str) -> str:
        self.pending += text
        kept = len(self.pending.rstrip())
        out, self.pending = self.pending[:kept], self.pending[kept:]
        return out

    def finish(self, any_calls: bool) -> str:
        out, self.pending = ("" if any_calls else self.pending), ""
        return out


class _CallBody:
    """One call's JSON body, fed in pieces; `close()` when the body is complete."""

    def __init__(self, index: int):
        self.index = index
        self.body = ""  # text seen before the call was committed
        self.committed = False
        self.args_pending, self.args_len = "", 0

    def feed(self, text: str, out: ParsedDelta) -> None:
        if self.committed:
            self._feed_args(text, out)
            return
        self.body += text
        m = _COMMIT.match(self.body)
        name = _json_string(m.group(1)) if m else None
        if name is not None:
            self.committed = True
            out.tool_calls.append(ToolCallDelta(self.index, new_call_id(), name))
            self._feed_args(self.body[m.end():], out)

    def _feed_args(self, text: str, out: ParsedDelta) -> None:
        pending = self.args_pending + text
        if self.args_len == 0:
            pending = pending.lstrip()
        safe = len(pending)
        while safe and pending[safe - 1] in _HELD_AFTER_ARGUMENTS:
            safe -= 1
        self._emit_args(pending[:safe], out)
        self.args_pending = pending[safe:]

    def _emit_args(self, text: str, out: ParsedDelta) -> None:
        if text:
            out.tool_calls.append(ToolCallDelta(self.index, arguments=text))
            self.args_len += len(text)

    def close(self, out: ParsedDelta) -> str | None:
        """End of the body. Returns None when it was a call, else the text to show instead."""
        if self.committed:
            tail = self.args_pending.rstrip()
            tail = tail[:-1].rstrip() if tail.endswith("}") else tail
            self._emit_args(tail if tail or self.args_len else "{}", out)
            return None
        call = _as_call(self.body)
        if call is None:
            return self.body
        name, arguments = call
        out.tool_calls.append(ToolCallDelta(self.index, new_call_id(), name, arguments))
        return None


def _json_string(literal: str) -> str | None:
    try:
        return json.loads(literal)
    except ValueError:  # a bad escape: the body is not a call in the committed shape
        return None


def _as_call(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON) if `body` is a JSON tool call object, else None."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class HermesToolParser:
    """`tool_choice: auto`: calls in `<tool_call>...</tool_call>` blocks among text."""

    def __init__(self) -> None:
        self.content = _Content()
        self.buf = ""  # unprocessed text (a possible partial tag)
        self.call: _CallBody | None = None
        self.num_calls = 0

    def feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        self.buf += text
        while self.buf:
            if not self._step(out):
                break
        return out

    def _step(self, out: ParsedDelta) -> bool:
        """Consume what can be consumed of `buf`; False when the rest must wait."""
        tag = END_TAG if self.call else START_TAG
        i = self.buf.find(tag)
        if i < 0:
            keep = _partial_suffix(self.buf, tag)
            self._take(self.buf[:len(self.buf) - keep], out)
            self.buf = self.buf[len(self.buf) - keep:]
            return False
        self._take(self.buf[:i], out)
        self.buf = self.buf[i + len(tag):]
        if self.call is None:
            self.call = _CallBody(self.num_calls)
        else:
            self._close_call(out)
        return True

    def _take(self, text: str, out: ParsedDelta) -> None:
        if self.call is not None:
            self.call.feed(text, out)
        else:
            out.content += self.content.add(text)

    def _close_call(self, out: ParsedDelta, closed: bool = True) -> None:
        assert self.call is not None
        text = self.call.close(out)
        if text is None:
            self.num_calls += 1
        else:
            out.content += self.content.add(START_TAG + text + (END_TAG if closed else ""))
        self.call = None

    def finish(self) -> ParsedDelta:
        out = ParsedDelta()
        rest, self.buf = self.buf, ""
        self._take(rest, out)
        if self.call is not None:
            self._close_call(out, closed=False)
        out.content += self.content.finish(self.num_calls > 0)
        return out


class JsonArrayToolParser:
    """`tool_choice: required`: a JSON array of {"name", "arguments"} objects."""

    def __init__(self) -> None:
        self.content = _Content()
        self.depth, self.in_string, self.escaped = 0, False, False
        self.call: _CallBody | None = None
        self.num_calls = 0

    def feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        start = 0  # of the text not yet handed to the current item
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "[{":
                self.depth += 1
                if self.depth == 2 and self.call is None:
                    self.call, start = _CallBody(self.num_calls), i
            elif ch in "]}":
                self.depth -= 1
                if self.depth == 1 and self.call is not None:
                    self.call.feed(text[start:i + 1], out)
                    self._close_call(out)
        if self.call is not None:
            self.call.feed(text[start:], out)
        return out

    def _close_call(self, out: ParsedDelta) -> None:
        assert self.call is not None
        text = self.call.close(out)
        if text is None:
            self.num_calls += 1
        else:
            out.content += self.content.add(text)
        self.call = None

    def finish(self) -> ParsedDelta:
        out = ParsedDelta()
        if self.call is not None:  # the output was cut short inside an item
            self._close_call(out)
        out.content += self.content.finish(self.num_calls > 0)
        return out


class NamedToolParser:
    """A named `tool_choice`: the whole output is that function's arguments."""

    def __init__(self, name: str):
        self.name, self.started = name, False

    def feed(self, text: str) -> ParsedDelta:
        if not text:
            return ParsedDelta()
        return ParsedDelta(tool_calls=[self._piece(text)])

    def _piece(self, text: str) -> ToolCallDelta:
        if self.started:
            return ToolCallDelta(0, arguments=text)
        self.started = True
        return ToolCallDelta(0, new_call_id(), self.name, text)

    def finish(self) -> ParsedDelta:
        return ParsedDelta() if self.started else ParsedDelta(tool_calls=[self._piece("")])


ToolParser = HermesToolParser | JsonArrayToolParser | NamedToolParser


def parse_all(parser: ToolParser, text: str) -> tuple[str | None, list[ToolCall]]:
    """The whole text through `parser`: (content or None, calls)."""
    out = parser.feed(text)
    out.extend(parser.finish())
    return out.content or None, merge_calls(out.tool_calls)


# ---- schemas that force tool calls ---------------------------------------------------------

def tool_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameters schema (an empty object schema when it declares none)."""
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def named_tool_schema(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The arguments of the function `name`."""
    return next(tool_parameters(t) for t in tools if t["function"]["name"] == name)


def required_tools_schema(tools: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """A JSON array of 1.. calls (at most 1 unless `parallel`), each one of the tools."""
    items = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                             "arguments": tool_parameters(t)},
              "required": ["name", "arguments"], "additionalProperties": False}
             for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return schema
