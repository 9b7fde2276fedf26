"""Tools: a Python function plus the JSON schema a model sees, with argument validation.

    @tool
    def convert(amount: float, currency: Literal["EUR", "USD"] = "EUR") -> str:
        \"\"\"Convert an amount of money.

        Args:
            amount: How much money.
            currency: The currency to convert to.
        \"\"\"

`@tool` builds the schema from the type hints (through pydantic, so `Literal`, `list[int]`,
optional parameters, pydantic models and dataclasses all work) and the Google-style
docstring (first paragraph: the description; `Args:` lines: the parameter descriptions).
`Tool.from_schema` wraps any function with a schema written by hand. `Tool.validate`
checks arguments against the schema with jsonschema and names the offending field;
`Tool.run` validates, calls the function and turns the result into the observation text.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

MAX_OBSERVATION_CHARS = 20_000  # a tool's result is cut here, with a note saying so


class ToolArgumentError(ValueError):
    """Arguments that do not match the tool's schema; the message names the field."""


@dataclass
class Tool:
    """A callable the model may ask for: name, description, JSON schema of the arguments."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    requires_approval: bool = False
    _coerce: Callable[[dict], dict] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, _ . or - "
                             "and start with a letter or _")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON schema of type "
                             f"'object', got {self.parameters.get('type')!r}")
        import jsonschema

        jsonschema.Draft202012Validator.check_schema(self.parameters)
        self._validator = jsonschema.Draft202012Validator(self.parameters)

    @classmethod
    def from_schema(cls, name: str, description: str, parameters: dict,
                    fn: Callable[..., Any], requires_approval: bool = False) -> Tool:
        return cls(name, description, parameters, fn, requires_approval)

    def spec(self) -> dict:
        """The entry for the OpenAI `tools` list."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, arguments: Any) -> dict:
        """`arguments` (a dict, or its JSON text) checked against the schema, else
        ToolArgumentError naming the first bad field."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ToolArgumentError(f"arguments of {self.name} are not valid JSON "
                                        f"({e.msg} at character {e.pos})") from None
        if not isinstance(arguments, dict):
            raise ToolArgumentError(f"arguments of {self.name} must be a JSON object, got "
                                    f"{type(arguments).__name__}")
        from jsonschema.exceptions import best_match

        error = best_match(self._validator.iter_errors(arguments))  # the deepest, most telling
        if error is not None:
            raise ToolArgumentError(f"{self.name}: {describe_error(error)}")
        return arguments

    def run(self, arguments: Any) -> str:
        """Validate, call, and return the result as text. Validation problems raise
        ToolArgumentError; the function's own exceptions propagate."""
        args = self.validate(arguments)
        if self._coerce is not None:
            args = self._coerce(args)
        return observation_text(self.fn(**args))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def describe_error(error: Any) -> str:
    """A jsonschema error as "field 'a.b': <what is wrong>"."""
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        where = f"{path}.{missing[0]}" if path and missing else (missing[0] if missing else path)
        return f"missing required field '{where}'"
    if error.validator == "additionalProperties":
        return f"unexpected field(s) in {path or 'the arguments'}: {error.message}"
    return f"field '{path or '(root)'}': {error.message}"


def observation_text(value: Any) -> str:
    """A tool's return value as the text the model reads (JSON for structured values)."""
    if value is None:
        text = "(no output)"
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > MAX_OBSERVATION_CHARS:
        cut = len(text) - MAX_OBSERVATION_CHARS
        text = text[:MAX_OBSERVATION_CHARS] + f"\n[... {cut} more characters cut]"
    return text


# ----------------------------------------------------------------------------- @tool

def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, requires_approval: bool = False) -> Any:
    """Make a Tool from a function's signature and docstring (usable as `@tool` or
    `@tool(requires_approval=True)`)."""
    def build(f: Callable[..., Any]) -> Tool:
        summary, arg_docs = parse_docstring(inspect.getdoc(f) or "")
        parameters, coerce = _schema_from_signature(f, arg_docs)
        text = description or summary
        if not text:
            raise ValueError(f"tool {f.__name__!r} needs a description: give it a docstring "
                             "or pass description=...")
        return Tool(name or f.__name__, text, parameters, f, requires_approval, coerce)

    return build(fn) if fn is not None else build


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring: the first
    paragraph, and the `Args:` entries (continuation lines are joined)."""
    description: list[str] = []
    args: dict[str, str] = {}
    section, current, arg_indent = "description", None, None
    for line in inspect.cleandoc(doc).splitlines():
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        header = re.fullmatch(r"(\w+):", stripped)
        if header and indent == 0:
            section = "args" if header.group(1) in ("Args", "Arguments", "Parameters") else "other"
            continue
        if section == "description":
            description.append(stripped)
        elif section == "args" and stripped:
            entry = re.fullmatch(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", stripped)
            if entry and indent <= (arg_indent if arg_indent is not None else indent):
                current, arg_indent = entry.group(1), indent
                args[current] = entry.group(2)
            elif current:
                args[current] += " " + stripped
    first_paragraph = "\n".join(description).strip().split("\n\n")[0]
    return " ".join(first_paragraph.split()), {k: v.strip() for k, v in args.items()}


def _schema_from_signature(f: Callable[..., Any],
                           arg_docs: dict[str, str]) -> tuple[dict, Callable[[dict], dict]]:
    import pydantic

    hints = get_type_hints(f, include_extras=True)
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(f).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"tool {f.__name__!r}: *{pname} / **{pname} cannot be described "
                             "by a schema; list the parameters")
        if pname not in hints:
            raise ValueError(f"tool {f.__name__!r}: parameter {pname!r} needs a type hint")
        default = ... if param.default is param.empty else param.default
        fields[pname] = (hints[pname], pydantic.Field(default, description=arg_docs.get(pname)))
    model = pydantic.create_model(f"{f.__name__}_arguments", **fields)
    schema = _clean(model.model_json_schema())
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False

    def coerce(arguments: dict) -> dict:
        parsed = model.model_validate(arguments)
        return {k: getattr(parsed, k) for k in arguments}

    return schema, coerce


def _clean(schema: Any) -> Any:
    """Drop pydantic's generated titles (noise for a model), keep everything else."""
    if isinstance(schema, dict):
        return {k: _clean(v) for k, v in schema.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema
