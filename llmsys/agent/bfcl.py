"""Berkeley Function Calling Leaderboard (BFCL) files: questions, functions and answers.

    for case in load_cases("data/bfcl/BFCL_v4_simple_python.json"):
        case.tools        # the functions as llmsys Tools (their schemas converted)
        case.calls        # the ground-truth calls, one value chosen per argument

BFCL writes its schemas with Python type names (`dict`, `float`, `tuple`, `any`); they are
converted to JSON Schema (`object`, `number`, `array`, no constraint). A ground-truth answer
lists the acceptable values of each argument, where "" means "may be left out"; `calls`
takes the first value that is not "" (and leaves out arguments with no such value).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsys.agent.protocols import ToolCall
from llmsys.agent.tools import Tool

_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array",
          "int": "integer", "str": "string", "bool": "boolean"}


def to_json_schema(node: dict) -> dict:
    """A BFCL parameter schema as JSON Schema (recursively)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            if value != "any":
                out["type"] = _TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(p) for name, p in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if out.get("type") == "array" and "enum" in out:  # BFCL puts the items' enum on the array
        out.setdefault("items", {})["enum"] = out.pop("enum")
    return out


def function_tool(function: dict) -> Tool:
    """A BFCL function as a Tool whose body only echoes its arguments (built once per distinct
    function: the live files repeat the same functions across many questions)."""
    return _function_tool(json.dumps(function, sort_keys=True))


@functools.lru_cache(maxsize=4096)
def _function_tool(function_json: str) -> Tool:
    function = json.loads(function_json)
    name = function["name"]
    return Tool.from_schema(name, function.get("description", ""),
                            to_json_schema(function["parameters"]),
                            lambda **arguments: json.dumps({name: arguments}))


@dataclass
class Case:
    id: str
    question: list
    tools: list[Tool]
    calls: list[ToolCall]


def ground_truth_calls(answer: list[dict]) -> list[ToolCall]:
    """One call per answer entry, with the first acceptable value of each argument."""
    calls = []
    for i, entry in enumerate(answer):
        ((name, options),) = entry.items()
        calls.append(ToolCall(name, json.dumps(_choose_fields(options)), id=f"call_{i}"))
    return calls


def _choose_fields(options: dict) -> dict:
    """{field: [acceptable values]} -> {field: the first one}; "" and null mean the field may
    be left out, so a field with nothing else is left out."""
    chosen = {}
    for key, values in options.items():
        values = [v for v in values if v != "" and v is not None]
        if values:
            chosen[key] = _resolve(values[0])
    return chosen


def _resolve(value: Any) -> Any:
    """Inside a chosen value, objects again list acceptable values per field."""
    if isinstance(value, dict):
        return _choose_fields({k: v if isinstance(v, list) else [v] for k, v in value.items()})
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def load_cases(question_file: str | Path, answer_dir: str | Path | None = None) -> list[Case]:
    """The questions of one BFCL file with their ground truth (from `possible_answer/`)."""
    question_file = Path(question_file)
    answer_file = Path(answer_dir or question_file.parent / "possible_answer") / question_file.name
    if not answer_file.is_file():
        raise FileNotFoundError(f"no answers for {question_file.name}: {answer_file} is missing")
    answers = {a["id"]: a["ground_truth"] for a in _read_lines(answer_file)}
    cases = []
    for q in _read_lines(question_file):
        if q["id"] in answers:
            cases.append(Case(q["id"], q["question"], [function_tool(f) for f in q["function"]],
                              ground_truth_calls(answers[q["id"]])))
    return cases


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
