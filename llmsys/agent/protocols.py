"""The three ways an agent and a model exchange tool calls over the OpenAI chat protocol.

- `NativeTools`: the OpenAI `tools` parameter; calls come back as `message.tool_calls`
  (parallel calls allowed) and results go back as `role: "tool"` messages. A model that
  writes its calls into the text instead (`<tool_call>{...}</tool_call>`, or a bare JSON
  object with "name" and "arguments") is understood too.
- `JsonActions`: for endpoints without tool support but with structured outputs. The model
  answers with one JSON object `{"thought": ..., "action": {"tool": ..., "arguments": {...}}}`
  or `{"thought": ..., "action": {"final_answer": ...}}`, constrained by `response_format`
  (a JSON schema built from the tools); results go back as user messages.
- `ReActText`: for any text model. The system prompt describes the tools and the format
  (Thought / Action / Action Input, or Final Answer); replies are parsed tolerantly (any
  case, extra spaces, code fences or single quotes around the input, text after it), and
  results go back as "Observation: ..." user messages.

Each protocol builds the extra request fields (`request`), turns a reply into an `Action`
(`parse`), writes the assistant turn and the observations back into the conversation, and
can write an action in its own wire format (`render`), which the tests use to check that
parse(render(calls)) gives the calls back.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmsys.agent.tools import Tool


@dataclass
class ToolCall:
    """One call the model asked for. `arguments` is the raw JSON text the model wrote (it may
    be invalid; the agent validates it) or an already parsed dict."""

    name: str
    arguments: str | dict
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def parsed_arguments(self) -> Any:
        if isinstance(self.arguments, dict):
            return self.arguments
        return json.loads(self.arguments) if self.arguments.strip() else {}

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass
class Action:
    """What one model reply asks for: tool calls, a final answer, or nothing parseable."""

    thought: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    final_answer: str | None = None
    error: str | None = None  # why the reply could not be understood (goes back to the model)


@dataclass
class Observation:
    call: ToolCall
    text: str


class ToolProtocol(Protocol):
    name: str

    def system_prompt(self, tools: list[Tool]) -> str: ...
    def request(self, tools: list[Tool], final: bool) -> dict: ...
    def parse(self, message: dict) -> Action: ...
    def assistant_message(self, message: dict, action: Action) -> dict: ...
    def observation_messages(self, observations: list[Observation]) -> list[dict]: ...
    def render(self, action: Action) -> dict: ...


def _tool_lines(tools: list[Tool]) -> str:
    return "\n".join(f"- {t.name}: {t.description}\n  arguments (JSON schema): "
                     f"{json.dumps(t.parameters, separators=(',', ':'))}" for t in tools)


# ------------------------------------------------------------------------------ native

_TAGGED_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class NativeTools:
    name = "native"

    def system_prompt(self, tools: list[Tool]) -> str:
        return ""

    def request(self, tools: list[Tool], final: bool) -> dict:
        if not tools:
            return {}
        return {"tools": [t.spec() for t in tools], "tool_choice": "none" if final else "auto"}

    def parse(self, message: dict) -> Action:
        content = message.get("content") or None
        raw_calls = message.get("tool_calls") or []
        calls = [ToolCall(c["function"]["name"], c["function"].get("arguments") or "",
                          c.get("id") or ToolCall("", "").id) for c in raw_calls]
        if calls:
            return Action(thought=content, calls=calls)
        text_calls = _calls_in_text(content or "")
        if text_calls:  # a model that writes its calls as text
            return Action(calls=text_calls)
        return Action(final_answer=content or "")

    def assistant_message(self, message: dict, action: Action) -> dict:
        out: dict = {"role": "assistant", "content": action.thought if action.calls
                     else message.get("content")}
        if action.calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": _arguments_text(c.arguments)}} for c in action.calls]
        return out

    def observation_messages(self, observations: list[Observation]) -> list[dict]:
        return [{"role": "tool", "tool_call_id": o.call.id, "content": o.text}
                for o in observations]

    def render(self, action: Action) -> dict:
        return self.assistant_message({"content": action.final_answer}, action)


def _calls_in_text(text: str) -> list[ToolCall]:
    blocks = _TAGGED_CALL.findall(text)
    if not blocks:
        stripped = _strip_fence(text.strip())
        blocks = [stripped] if stripped.startswith("{") and '"name"' in stripped else []
    calls = []
    for block in blocks:
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            arguments = obj.get("arguments", obj.get("parameters", {}))
            calls.append(ToolCall(obj["name"], _arguments_text(arguments)))
    return calls


def _arguments_text(arguments: str | dict) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


# --------------------------------------------------------------------------------- json

class JsonActions:
    name = "json"

    def system_prompt(self, tools: list[Tool]) -> str:
        return ("You can use these tools:\n" + _tool_lines(tools) + "\n\nAnswer with one JSON "
                'object: {"thought": "...", "action": {"tool": NAME, "arguments": {...}}} to '
                'call a tool, or {"thought": "...", "action": {"final_answer": "..."}} when you '
                "know the answer. Tool results come back as the next user message.")

    def request(self, tools: list[Tool], final: bool) -> dict:
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "action", "strict": True, "schema": action_schema([] if final else tools)}}}

    def parse(self, message: dict) -> Action:
        text = _strip_fence((message.get("content") or "").strip())
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            obj = _first_json_object(text)
            tagged = _calls_in_text(text)
            if tagged and not (isinstance(obj, dict) and "action" in obj):
                return Action(calls=tagged)  # a model that writes its trained call syntax
            if obj is None:
                return Action(error=f"the reply is not a JSON object ({e.msg}); answer with "
                                    'one JSON object {"thought": ..., "action": ...}')
        if not isinstance(obj, dict) or not isinstance(obj.get("action"), dict):
            return Action(error='the JSON object needs an "action" object')
        thought, action = obj.get("thought"), obj["action"]
        if "final_answer" in action:
            return Action(thought=thought, final_answer=str(action["final_answer"]))
        if isinstance(action.get("tool"), str):
            return Action(thought=thought, calls=[
                ToolCall(action["tool"], _arguments_text(action.get("arguments", {})))])
        return Action(error='"action" needs either "tool" and "arguments" or "final_answer"')

    def assistant_message(self, message: dict, action: Action) -> dict:
        return {"role": "assistant", "content": message.get("content") or ""}

    def observation_messages(self, observations: list[Observation]) -> list[dict]:
        return [{"role": "user", "content": "\n\n".join(
            f"Result of {o.call.name}: {o.text}" for o in observations)}]

    def render(self, action: Action) -> dict:
        if action.calls:
            call = action.calls[0]
            body = {"tool": call.name, "arguments": call.parsed_arguments()}
        else:
            body = {"final_answer": action.final_answer}
        return {"role": "assistant", "content": json.dumps(
            {"thought": action.thought or "", "action": body}, ensure_ascii=False)}


def action_schema(tools: list[Tool]) -> dict:
    """The JSON schema of one JSON-mode reply: a call of one of `tools` or a final answer."""
    choices: list[dict] = [{"type": "object", "properties": {
        "tool": {"const": t.name}, "arguments": _local_refs(t.parameters, t.name)},
        "required": ["tool", "arguments"], "additionalProperties": False} for t in tools]
    choices.append({"type": "object", "properties": {"final_answer": {"type": "string"}},
                    "required": ["final_answer"], "additionalProperties": False})
    schema: dict = {"type": "object", "properties": {
        "thought": {"type": "string"}, "action": {"anyOf": choices}},
        "required": ["thought", "action"], "additionalProperties": False}
    defs = {f"{t.name}.{k}": v for t in tools for k, v in t.parameters.get("$defs", {}).items()}
    if defs:
        schema["$defs"] = defs
    return schema


def _local_refs(parameters: dict, prefix: str) -> dict:
    """A tool's schema with its `$defs` moved up to the action schema (renamed per tool)."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (f"#/$defs/{prefix}.{v.rsplit('/', 1)[-1]}" if k == "$ref" else walk(v))
                    for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(parameters)


# -------------------------------------------------------------------------------- react

_FIELD = re.compile(r"^\s*\**\s*(thought|action input|action|final answer|observation)\s*\**\s*:",
                    re.IGNORECASE | re.MULTILINE)


class ReActText:
    name = "react"

    def system_prompt(self, tools: list[Tool]) -> str:
        return ("You can use these tools:\n" + _tool_lines(tools) + "\n\nUse this format:\n"
                "Thought: what you think about next\nAction: the tool name\n"
                "Action Input: the arguments as a JSON object\n"
                "Then stop; the result comes back as \"Observation: ...\". When you know the "
                "answer:\nThought: ...\nFinal Answer: the answer")

    def request(self, tools: list[Tool], final: bool) -> dict:
        return {"stop": ["\nObservation:"]}

    def parse(self, message: dict) -> Action:
        fields = _react_fields(message.get("content") or "")
        thought = fields.get("thought")
        if "action" in fields:
            name = fields["action"].strip().strip("`'\"").split("(")[0].strip()
            raw = fields.get("action input", "")
            if not name:
                return Action(thought=thought, error="'Action:' names no tool")
            arguments = _tolerant_json(raw)
            if arguments is None:
                return Action(thought=thought, error=f"the Action Input of {name} is not a "
                                                     f"JSON object: {raw[:200]!r}")
            return Action(thought=thought, calls=[ToolCall(name, json.dumps(arguments))])
        if "final answer" in fields:
            return Action(thought=thought, final_answer=fields["final answer"].strip())
        text = (message.get("content") or "").strip()
        tagged = _calls_in_text(text) if not fields else []
        if tagged:  # a model that writes its trained call syntax instead of the format
            return Action(calls=tagged)
        if text and not fields:  # plain text with no format at all: take it as the answer
            return Action(final_answer=text)
        return Action(thought=thought, error="write either 'Action:' with 'Action Input:' or "
                                             "'Final Answer:'")

    def assistant_message(self, message: dict, action: Action) -> dict:
        return {"role": "assistant", "content": (message.get("content") or "").rstrip()}

    def observation_messages(self, observations: list[Observation]) -> list[dict]:
        return [{"role": "user", "content": "\n".join(f"Observation: {o.text}"
                                                      for o in observations)}]

    def render(self, action: Action) -> dict:
        lines = [f"Thought: {action.thought or 'I will use a tool.'}"]
        if action.calls:
            call = action.calls[0]
            lines += [f"Action: {call.name}",
                      f"Action Input: {json.dumps(call.parsed_arguments(), ensure_ascii=False)}"]
        else:
            lines.append(f"Final Answer: {action.final_answer}")
        return {"role": "assistant", "content": "\n".join(lines)}


def _react_fields(text: str) -> dict[str, str]:
    """The first value of each ReAct field, up to the next field (an invented Observation and
    anything after it is dropped)."""
    matches = list(_FIELD.finditer(text))
    fields: dict[str, str] = {}
    for i, m in enumerate(matches):
        key = m.group(1).lower()
        if key == "observation":
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        fields.setdefault(key, text[m.end():end].strip())
    return fields


def _tolerant_json(raw: str) -> dict | None:
    """A JSON object from the text a model wrote: fences, single quotes (a Python literal),
    trailing text after the object, or nothing at all (no arguments) are all accepted."""
    text = _strip_fence(raw.strip())
    if not text:
        return {}
    for candidate in (text, _first_json_text(text)):
        if candidate is None:
            continue
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            try:
                obj = ast.literal_eval(candidate)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(obj, dict):
            return obj
    return None


def _strip_fence(text: str) -> str:
    match = re.fullmatch(r"```[\w-]*\s*\n?(.*?)\n?\s*```", text, re.DOTALL)
    return match.group(1).strip() if match else text


def _first_json_text(text: str) -> str | None:
    """The first balanced {...} in `text` (strings and escapes respected)."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_string, escaped = 0, None, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == in_string:
                in_string = None
        elif ch in "\"'":
            in_string = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def _first_json_object(text: str) -> Any:
    candidate = _first_json_text(text)
    if candidate is None:
        return None
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        return None


PROTOCOLS: tuple[type, ...] = (NativeTools, JsonActions, ReActText)


def protocol_for(mode: str) -> ToolProtocol:
    """The protocol for `mode`: "native", "json" or "react"."""
    for cls in PROTOCOLS:
        if cls.name == mode:
            return cls()
    raise ValueError(f"unknown tool-calling mode {mode!r}; expected one of "
                     f"{[c.name for c in PROTOCOLS]} or 'auto'")
