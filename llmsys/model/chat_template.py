"""Chat templates rendered exactly as Hugging Face transformers renders them.

`render_chat_template(template, messages, tools=..., add_generation_prompt=..., variables=...)`
runs the Jinja template in a sandboxed environment with the same globals and filters
(`raise_exception`, `strftime_now`, `tojson`, `{% generation %}` blocks, loop controls) and
the same message pre-processing, so both give the same string for the same template.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmsys.errors import TemplateError

# Context names the renderer sets itself; template_vars may not replace them.
_RESERVED_TEMPLATE_VARS = frozenset({"messages", "tools", "documents", "add_generation_prompt"})
# Message fields that carry reasoning; the first is the one chat templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


# --------------------------------------------------------------------------------------------
# Chat template environment


class _RaisedByTemplate(jinja2.TemplateError):
    """Raised by the ``raise_exception`` template global; carries the template's own message."""


def _raise_exception(message: str) -> None:
    raise _RaisedByTemplate(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """json.dumps without HTML escaping, non-ASCII kept as is (as transformers' tojson filter)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _SafeDict:
    """The ``dict`` template global: builds plain dicts without exposing the ``dict`` type."""

    def __call__(self, *args: Any, **fields: Any) -> dict:
        return dict(*args, **fields)

    def fromkeys(self, keys: Any, value: Any = None) -> dict:
        return dict.fromkeys(keys, value)


class _SafeNamespace(jinja2.utils.Namespace):
    """The ``namespace`` template global; refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **attrs: Any) -> None:  # self is args[0], as in Namespace
        self, args = args[0], args[1:]
        values = dict(*args, **attrs)
        for name in values:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates may not set underscore-prefixed namespace attributes ({name!r})"
        )


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant output; renders its body as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _SafeDict()
    env.globals["namespace"] = _SafeNamespace
    return env


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        message = f"chat template syntax error on line {exc.lineno}: {exc.message}"
        raise TemplateError(message) from exc


# --------------------------------------------------------------------------------------------
# Template inputs


def _plain(value: Any) -> Any:
    """A copy made of plain JSON-like types; other objects become a ``<TypeName>`` placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return f"<{type(value).__name__}>"


def _prepare_message(message: Any) -> dict[str, Any]:
    """Drop None fields, copy to plain data, and alias reasoning under every name templates read."""
    if not isinstance(message, Mapping):
        raise TemplateError(f"chat messages must be dicts, got {message!r}")
    prepared = _plain({key: value for key, value in message.items() if value is not None})
    reasoning = next((prepared[key] for key in _REASONING_FIELDS if key in prepared), None)
    if reasoning is None:
        return prepared
    return {"thinking": reasoning, **prepared, "reasoning_content": reasoning}


def _prepare_tools(tools: list[dict] | None) -> list[dict] | None:
    if tools is None:
        return None
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise TemplateError(f"tools must be JSON-schema dicts, got {tool!r}")
    return _plain(list(tools))


def render_chat_template(
    template: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Render a chat template exactly as transformers' ``apply_chat_template(tokenize=False)``.

    ``variables`` (special tokens, template_vars) become extra template variables; ``tools`` and
    ``documents`` are always defined (None when not given), as in transformers.
    """
    if not messages:
        raise TemplateError("cannot apply a chat template to an empty conversation")
    variables = dict(variables or {})
    clash = sorted(_RESERVED_TEMPLATE_VARS & variables.keys())
    if clash:
        raise TemplateError(f"template_vars may not set {', '.join(clash)}")
    context = {
        **_plain(variables),
        "messages": [_prepare_message(message) for message in messages],
        "tools": _prepare_tools(tools),
        "documents": None,
        "add_generation_prompt": add_generation_prompt,
    }
    compiled = _compile(template)
    try:
        return compiled.render(context)
    except _RaisedByTemplate as exc:
        raise TemplateError(exc.message or "chat template raised an error") from exc
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError) as exc:
        raise TemplateError(f"chat template failed to render: {type(exc).__name__}: {exc}") from exc
