"""Tokenizer: loads a Hugging Face tokenizer directory, renders chat templates, streams text.

``Tokenizer.from_dir`` reads ``tokenizer.json`` (through the ``tokenizers`` library),
``tokenizer_config.json`` (special tokens, chat templates), ``chat_template.jinja`` and
``chat_templates/*.jinja`` (which take priority over the config, as in ``transformers``) and
``generation_config.json`` (extra end-of-sequence ids). ``apply_chat_template`` renders in the same
sandboxed Jinja environment ``transformers`` uses, so both give the same string for the same
template. ``IncrementalDetokenizer`` turns a stream of token ids into text without ever emitting a
partial UTF-8 character.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from llmsys.errors import CheckpointError, TemplateError
from llmsys.model.chat_template import render_chat_template

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATES_DIR = "chat_templates"

# The named special tokens every Hugging Face tokenizer knows, in the order it registers them.
NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_REPLACEMENT_CHAR = "\ufffd"


# --------------------------------------------------------------------------------------------
# Reading the directory


def _read_json(path: Path, expected: str) -> Any:
    """Parse a JSON file, turning any failure into a CheckpointError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; expected {expected}") from exc


def _read_json_object(path: Path, expected: str) -> dict[str, Any]:
    """Parse an optional JSON object file; a missing file reads as ``{}``."""
    if not path.is_file():
        return {}
    data = _read_json(path, expected)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}; expected {expected}")
    return data


def _load_backend(directory: Path) -> Backend:
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {TOKENIZER_FILE}; expected a Hugging Face tokenizer directory "
            f"with a {TOKENIZER_FILE} saved by the tokenizers library"
        )
    try:
        backend = Backend.from_file(str(path))
    except Exception as exc:  # the Rust loader raises plain Exception subclasses
        raise CheckpointError(
            f"cannot load {path}: {exc}; expected a tokenizers JSON serialization"
        ) from exc
    backend.no_truncation()
    backend.no_padding()
    return backend


def _token_content(value: Any, key: str, path: Path) -> str | None:
    """A special token from a config: a string, or a dict with a "content" key (AddedToken form)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise CheckpointError(f"{path}: {key} is {value!r}; expected a string or a dict with 'content'")


def _added_token(value: Any, special: bool) -> AddedToken:
    """Build an AddedToken from a string or from the dict form tokenizer configs store."""
    if isinstance(value, str):
        return AddedToken(value, special=special, normalized=False)
    return AddedToken(
        value["content"],
        single_word=bool(value.get("single_word", False)),
        lstrip=bool(value.get("lstrip", False)),
        rstrip=bool(value.get("rstrip", False)),
        normalized=bool(value.get("normalized", not special)),
        special=special or bool(value.get("special", False)),
    )


def _load_config(directory: Path) -> dict[str, Any]:
    """tokenizer_config.json, with legacy special_tokens_map.json entries applied on top.

    Like transformers, the legacy map is only read when the config has no ``added_tokens_decoder``,
    and then its entries win over the config's.
    """
    expected = "a JSON object of tokenizer settings"
    config = _read_json_object(directory / CONFIG_FILE, expected)
    if "added_tokens_decoder" not in config:
        legacy = _read_json_object(directory / SPECIAL_TOKENS_MAP_FILE, expected)
        config.update({key: value for key, value in legacy.items() if value is not None})
    return config


def _special_token_values(config: dict[str, Any]) -> dict[str, Any]:
    """Named special tokens: the standard ones plus model-specific ``*_token`` string entries."""
    values = {key: config.get(key) for key in NAMED_SPECIAL_TOKENS}
    for key, value in config.items():
        if key.endswith("_token") and key not in values and isinstance(value, (str, Mapping)):
            values[key] = value
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        values.update(extra)
    return {key: value for key, value in values.items() if value is not None}


def _extra_special_tokens(config: dict[str, Any]) -> list[Any]:
    """Unnamed special tokens: ``extra_special_tokens`` or legacy ``additional_special_tokens``."""
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if not isinstance(extra, list):
        return []
    return [token for token in extra if isinstance(token, str) or _is_token_dict(token)]


def _is_token_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("content"), str)


def _register_missing_tokens(backend: Backend, config: dict[str, Any], named: dict) -> None:
    """Add the config's added and special tokens that tokenizer.json does not already hold.

    transformers does the same on load, so a special token that is only in the config still
    encodes as one id (a new one at the end of the vocabulary if it is not in the vocabulary).
    """
    known = {token.content for token in backend.get_added_tokens_decoder().values()}
    candidates = _config_added_tokens(config)
    candidates += [_added_token(value, special=True) for value in named.values()]
    candidates += [_added_token(value, special=True) for value in _extra_special_tokens(config)]
    for token in candidates:
        if token.content not in known:
            backend.add_tokens([token])
            known.add(token.content)


def _config_added_tokens(config: dict[str, Any]) -> list[AddedToken]:
    """The ``added_tokens_decoder`` entries of tokenizer_config.json, in id order."""
    decoder = config.get("added_tokens_decoder")
    if not isinstance(decoder, Mapping):
        return []
    entries = [
        (int(key), entry)
        for key, entry in decoder.items()
        if str(key).isdigit() and _is_token_dict(entry)
    ]
    return [
        _added_token(entry, special=bool(entry.get("special", False)))
        for _, entry in sorted(entries, key=lambda item: item[0])
    ]


def _load_chat_templates(directory: Path, config: dict[str, Any]) -> dict[str, str]:
    """Named chat templates; template files in the directory replace the config's templates."""
    templates: dict[str, str] = {}
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = _read_text(directory / CHAT_TEMPLATE_FILE)
    named_dir = directory / CHAT_TEMPLATES_DIR
    if named_dir.is_dir():
        for path in sorted(named_dir.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = _read_text(path)
    if templates:
        return templates
    return _config_chat_templates(config.get("chat_template"), directory / CONFIG_FILE)


def _config_chat_templates(value: Any, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, Mapping):
        return {str(name): str(template) for name, template in value.items()}
    if isinstance(value, list) and all(_is_named_template(item) for item in value):
        return {item["name"]: item["template"] for item in value}
    raise CheckpointError(
        f"{path}: chat_template must be a string or a list of {{name, template}} dicts"
    )


def _is_named_template(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("template"), str)
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; expected a UTF-8 text file") from exc


def _generation_eos_ids(directory: Path) -> list[int]:
    """eos_token_id from generation_config.json (an int or a list of ints), if the file exists."""
    path = directory / GENERATION_CONFIG_FILE
    config = _read_json_object(path, "a JSON object of generation settings")
    value = config.get("eos_token_id")
    if value is None:
        return []
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CheckpointError(f"{path}: eos_token_id is {value!r}; expected an int or list of ints")
    return ids


# --------------------------------------------------------------------------------------------
# Tokenizer


class Tokenizer:
    """A ``tokenizers`` tokenizer plus the special tokens and chat templates that go with it."""

    def __init__(
        self,
        backend: Backend,
        special_tokens_map: Mapping[str, str],
        chat_templates: Mapping[str, str] | None = None,
        extra_eos_token_ids: Sequence[int] = (),
    ) -> None:
        self._backend = backend
        self.special_tokens_map: dict[str, str] = dict(special_tokens_map)
        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        self.chat_template: str | None = self.chat_templates.get("default")
        self.bos_token = self.special_tokens_map.get("bos_token")
        self.eos_token = self.special_tokens_map.get("eos_token")
        self.pad_token = self.special_tokens_map.get("pad_token")
        self.bos_token_id = self._optional_id(self.bos_token)
        self.pad_token_id = self._optional_id(self.pad_token)
        eos_ids = [self._optional_id(self.eos_token), *extra_eos_token_ids]
        self.eos_token_ids: list[int] = list(dict.fromkeys(i for i in eos_ids if i is not None))

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load tokenizer.json, tokenizer_config.json, chat templates and generation eos ids."""
        directory = Path(path)
        if not directory.is_dir():
            raise CheckpointError(
                f"tokenizer directory {directory} does not exist or is not a directory; "
                f"expected a directory holding {TOKENIZER_FILE}"
            )
        backend = _load_backend(directory)
        config = _load_config(directory)
        named = _special_token_values(config)
        special_tokens_map = {
            key: _token_content(value, key, directory / CONFIG_FILE) for key, value in named.items()
        }
        _register_missing_tokens(backend, config, named)
        return cls(
            backend,
            special_tokens_map,
            _load_chat_templates(directory, config),
            _generation_eos_ids(directory),
        )

    @property
    def backend(self) -> Backend:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Size of the full vocabulary including added tokens (``len()`` of a transformers one)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _optional_id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text encode as their single id."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 byte sequences decode to U+FFFD."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._backend.id_to_token(i)

    def get_chat_template(self, tools: list[dict] | None = None) -> str:
        """The template apply_chat_template uses: "tool_use" when tools are given and it exists."""
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if self.chat_template is not None:
            return self.chat_template
        if self.chat_templates:
            names = ", ".join(sorted(self.chat_templates))
            raise TemplateError(f"the tokenizer has no default chat template (it has: {names})")
        raise TemplateError("the tokenizer has no chat template")

    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        template_vars: dict | None = None,
    ) -> str | list[int]:
        """Render ``messages`` with the chat template; with tokenize=True, return the token ids.

        The template sees ``messages``, ``tools``, ``add_generation_prompt``, every special token
        by name (``bos_token``, ``eos_token``, ...) and ``template_vars``, which win over them.
        """
        template = self.get_chat_template(tools)
        variables = {**self.special_tokens_map, **(template_vars or {})}
        text = render_chat_template(
            template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            variables=variables,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


# --------------------------------------------------------------------------------------------
# Streaming detokenization


class IncrementalDetokenizer:
    """Turns token ids arriving one at a time into text, never splitting a UTF-8 character.

    Each ``push`` decodes a short window of recent ids and returns the text the newest id
    completed. Text is held back while it ends in U+FFFD (an incomplete character). The pushes
    plus ``flush`` concatenate to ``decode(new_ids)``; the last few ``prompt_ids`` are decoded as
    context only, so tokenizers that drop a leading space at the start of a decode keep it.
    """

    CONTEXT_TOKENS = 5

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_ids)[-self.CONTEXT_TOKENS :] if self.CONTEXT_TOKENS else []
        self._ids: list[int] = context
        self._start = 0  # first id of the decode window
        self._emitted = len(context)  # ids before this index have had their text returned
        self._window_text = self._decode(self._start, self._emitted)

    def _decode(self, start: int, stop: int) -> str:
        ids = self._ids[start:stop]
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token id; return the newly completed text (possibly empty)."""
        self._ids.append(token_id)
        text = self._decode(self._start, len(self._ids))
        if text.endswith(_REPLACEMENT_CHAR) or len(text) <= len(self._window_text):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Return any held-back text (an incomplete character decodes as U+FFFD) and reset."""
        text = self._decode(self._start, len(self._ids))
        return self._advance(text) if text != self._window_text else ""

    def _advance(self, text: str) -> str:
        delta = _text_after(self._window_text, text)
        self._start, self._emitted = self._emitted, len(self._ids)
        self._window_text = self._decode(self._start, self._emitted)
        return delta


def _text_after(prefix: str, text: str) -> str:
    """The part of ``text`` after ``prefix``; from their common prefix if text diverges."""
    if text.startswith(prefix):
        return text[len(prefix) :]
    common = len(os.path.commonprefix([prefix, text]))
    return text[common:]
