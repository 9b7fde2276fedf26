"""Grammar-constrained decoding (structured outputs) with llguidance: JSON schema, regex,
choice or grammar -> a mask of the tokens allowed next, computed on the CPU.

    grammars = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)
    matcher = grammars.matcher(StructuredOutputsParams(json=schema))  # ValueError if invalid
    forbidden = grammars.forbidden_tokens([(row, matcher)], *logits.shape)  # (S, V) bool
    matcher.accept(token); matcher.is_finished                # after sampling

Compiled grammars are cached by their text; each sequence gets its own `GrammarMatcher`
(a copy of the cached one). JSON grammars allow no whitespace between tokens (random or weak
models would otherwise emit whitespace forever). `bfcl_to_json_schema` turns the
Python-typed parameter specs of the Berkeley Function Calling Leaderboard into JSON Schema;
`limit_json_schema` bounds a schema's strings, arrays and free-form values so that any model
must finish. Tests: `pytest tests/engine/test_grammar.py tests/engine/test_bfcl.py`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmsys.model.tokenizer import Tokenizer
from llmsys.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    import llguidance

CACHE_SIZE = 512  # compiled grammars kept


def _import_llguidance():
    try:
        import llguidance
    except ImportError as exc:
        raise ImportError("structured outputs need llguidance: pip install 'llmsys[serve]'") \
            from exc
    return llguidance


class GrammarMatcher:
    """Where one sequence stands in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32, one bit per token)."""
        out = bitmask[row]
        assert out.is_contiguous() and out.dtype == torch.int32 and out.device.type == "cpu"
        self.matcher.unsafe_compute_mask_ptr(out.data_ptr(), out.numel() * 4)

    def accept(self, token: int) -> bool:
        """Advance past a sampled token; False if the grammar did not allow it."""
        return self.matcher.consume_token(token)

    @property
    def is_finished(self) -> bool:
        """The grammar is complete (or broken): nothing but EOS could follow."""
        return self.matcher.is_stopped()


class GrammarCompiler:
    """Compiles structured-output params for one tokenizer and masks logits with them."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Iterable[int]):
        llg = _import_llguidance()
        self.vocab_size = vocab_size  # the model's (logits width), may exceed the tokenizer's
        self.eos_token_ids = frozenset(eos_token_ids)
        self.ll_tokenizer = llg.LLTokenizer(
            llguidance_tokenizer_json(tokenizer), n_vocab=max(vocab_size, tokenizer.vocab_size),
            eos_token=sorted(self.eos_token_ids))
        self.executor = llg.LLExecutor()
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    def matcher(self, params: StructuredOutputsParams) -> GrammarMatcher:
        """A fresh matcher for one sequence; ValueError if the schema/regex/grammar is bad."""
        try:
            grammar = grammar_text(params)
            compiled = self._cache.get(grammar)
            if compiled is None:
                llg = _import_llguidance()
                compiled = llg.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
                if compiled.is_error():
                    raise ValueError(compiled.get_error().strip())
        except (ValueError, TypeError) as exc:
            name, value = _chosen(params)
            raise ValueError(f"structured_outputs.{name}={_short(value)} is invalid: "
                             f"{exc}") from None
        if grammar not in self._cache:
            self._cache[grammar] = compiled
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(grammar)
        return GrammarMatcher(compiled.deep_copy())

    def forbidden_tokens(self, rows: list[tuple[int, GrammarMatcher]], num_rows: int,
                         vocab: int) -> torch.Tensor:
        """(num_rows, vocab) bool, True where a listed row's grammar forbids the token (the
        other rows allow all). One parallel llguidance call fills the rows' bitmasks."""
        width = (self.ll_tokenizer.vocab_size + 31) // 32
        bitmask = torch.empty((len(rows), width), dtype=torch.int32)
        jobs = [(m.matcher, i) for i, (_, m) in enumerate(rows)]
        self.executor.unsafe_compute_mask_ptr(jobs, bitmask.data_ptr(), width * 4, len(rows))
        # Bit j of 32-bit word w is token 32 * w + j (little-endian bytes, as on x86 / ARM).
        allowed = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, count=vocab,
                                bitorder="little")
        forbidden = torch.from_numpy(allowed == 0)
        if len(rows) == num_rows:
            return forbidden
        everything = torch.zeros((num_rows, vocab), dtype=torch.bool)
        everything[[r for r, _ in rows]] = forbidden
        return everything


def llguidance_tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer as llguidance should see it. llguidance marks every added token special
    (it then matches no text), but non-special added tokens such as `<tool_call>` are text a
    model writes, which a regex or a grammar literal must be able to match: they move into
    the vocabulary under their own text (byte-level encoded where the tokenizer is)."""
    spec = json.loads(tokenizer.backend.to_str())
    vocab = spec.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):  # e.g. Unigram's list: left as it is
        return json.dumps(spec)
    byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
    to_unicode = _byte_level_alphabet()
    special = []
    for token in spec.get("added_tokens", []):
        text = token["content"]
        key = "".join(to_unicode[b] for b in text.encode()) if byte_level else text
        if token.get("special") or key in vocab:
            special.append(token)
        else:
            vocab[key] = token["id"]
    spec["added_tokens"] = special
    return json.dumps(spec)


def _byte_level_alphabet() -> list[str]:
    """The printable character that stands for each byte in byte-level BPE vocabularies:
    printable Latin-1 bytes stand for themselves, the others for code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar (its JSON text) for the params; also the cache key."""
    llg = _import_llguidance()
    no_space = {"whitespace_flexible": False}  # a schema's own "x-guidance" may override
    if params.json is not None:
        return llg.LLMatcher.grammar_from_json_schema(params.json, defaults=no_space)
    if params.json_object:
        return llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=no_space)
    if params.regex is not None:
        return llg.LLMatcher.grammar_from_regex(params.regex)
    if params.choice is not None:
        return llg.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c) for c in params.choice))
    return llg.grammar_from("grammar", params.grammar)  # Lark, or GBNF converted to Lark


def _chosen(params: StructuredOutputsParams) -> tuple[str, Any]:
    for name in ("json", "regex", "choice", "grammar"):
        if getattr(params, name) is not None:
            return name, getattr(params, name)
    return "json_object", True


def _short(value: Any, limit: int = 120) -> str:
    try:
        text = json.dumps(value) if isinstance(value, dict | list) else repr(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---- JSON Schema helpers ----------------------------------------------------------------

# BFCL writes Python type names; these are the JSON Schema types they mean (None: any value).
BFCL_TYPES: dict[str, str | None] = {
    "dict": "object", "object": "object", "float": "number", "number": "number",
    "integer": "integer", "int": "integer", "string": "string", "str": "string",
    "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array",
    "tuple": "array", "any": None, "null": "null", "none": "null",
}
_JSON_TYPES = {"object": dict, "number": (int, float), "integer": int, "string": str,
               "boolean": bool, "array": list, "null": type(None)}


def bfcl_to_json_schema(parameters: dict) -> dict:
    """A BFCL function's `parameters` (Python type names: dict, float, tuple, any, ...) ->
    JSON Schema. Objects that list properties take no others (a call's arguments are the
    declared ones); `default` and BFCL's non-standard `optional` are dropped (they do not
    constrain); an `enum` whose values do not fit the declared type (BFCL's "dontcare"
    sentinels) keeps the enum and drops the type; an `enum` on an array applies to its items."""
    if not isinstance(parameters, dict):
        raise ValueError(f"a BFCL parameter spec must be a dict, got {_short(parameters)}")
    out: dict[str, Any] = {}
    raw = parameters.get("type")
    if raw is not None:
        if not isinstance(raw, str) or raw.lower() not in BFCL_TYPES:
            raise ValueError(f"BFCL type {raw!r} is unknown: allowed {sorted(BFCL_TYPES)}")
        if BFCL_TYPES[raw.lower()] is not None:
            out["type"] = BFCL_TYPES[raw.lower()]
    for key, value in parameters.items():
        if key == "properties":
            if not isinstance(value, dict):
                raise ValueError(f"BFCL properties must be a dict, got {_short(value)}")
            out["properties"] = {k: bfcl_to_json_schema(v) for k, v in value.items()}
            out.setdefault("additionalProperties", False)
        elif key == "items":
            out["items"] = bfcl_to_json_schema(value)
        elif key in ("description", "required", "enum", "format", "minimum", "maximum",
                     "minItems", "maxItems", "minLength", "maxLength", "pattern"):
            out[key] = value
    if "enum" in out and out.get("type") == "array":
        out["items"] = {**out.get("items", {}), "enum": out.pop("enum")}
    if "enum" in out and "type" in out:
        kind = _JSON_TYPES[out["type"]]
        if not all(isinstance(v, kind) and not (isinstance(v, bool) and kind is not bool)
                   for v in out["enum"]):
            del out["type"]
    return out


def limit_json_schema(schema: Any, max_string_length: int = 16, max_items: int = 4,
                      max_magnitude: int = 10**6) -> Any:
    """A copy of `schema` whose every valid instance is also valid for the original, with
    strings of at most `max_string_length` characters, arrays of at most `max_items` items,
    numbers within +-`max_magnitude` (non-integers with two decimals), no undeclared object
    properties, free-form values ({}) reduced to short scalars and free-form objects (no
    declared properties) to their required keys: a constrained model, even a random one,
    soon has to finish (the grammar cannot bound an object's key names otherwise)."""
    limits = (max_string_length, max_items, max_magnitude)
    if isinstance(schema, list):
        return [limit_json_schema(s, *limits) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: limit_json_schema(v, *limits) if k in _SUBSCHEMAS else v
           for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {k: limit_json_schema(v, *limits) for k, v in schema[key].items()}
    kind = out.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind}
    if any(k in out for k in ("enum", "const", "pattern", "format", "$ref", "anyOf", "oneOf",
                              "allOf", "not", "if")):
        kinds = set()  # already bounded, or too intricate to bound safely: left as it is
    extra = out.get("additionalProperties", True)
    if kinds & {None, "object"} and "properties" in out:
        out["additionalProperties"] = False if extra is True else extra
    elif kinds == {None} and "required" not in out:  # free-form: a short scalar
        out.update(_short_scalar(max_string_length))
    elif kinds == {"object"}:  # free-form object: its required keys, with short scalars
        value = _short_scalar(max_string_length) if extra is True else extra
        out["properties"] = {k: value for k in out.get("required", [])}
        out["additionalProperties"] = False
    if "string" in kinds:
        limit = min(out.get("maxLength", max_string_length), max_string_length)
        out["maxLength"] = max(limit, out.get("minLength", 0))
    if "array" in kinds:
        out["maxItems"] = max(min(out.get("maxItems", max_items), max_items),
                              out.get("minItems", 0))
    if kinds & {"integer", "number"}:
        _limit_number(out, max_magnitude, decimals="number" in kinds)
    return out


def _limit_number(out: dict, max_magnitude: int, decimals: bool) -> None:
    """Bound a number's range (on the sides left open) and, for non-integers, its decimals."""
    def bound(*keys: str) -> float | None:
        values = [out[k] for k in keys if isinstance(out.get(k), int | float)
                  and not isinstance(out[k], bool)]
        return values[0] if values else None

    low, high = bound("minimum", "exclusiveMinimum"), bound("maximum", "exclusiveMaximum")
    if high is None:
        out["maximum"] = high = (low if low is not None else 0) + max_magnitude
    if low is None:
        out["minimum"] = low = high - max_magnitude
    if decimals and "multipleOf" not in out and high - low >= 1:
        out["multipleOf"] = 0.01


def _short_scalar(max_string_length: int) -> dict:
    return {"anyOf": [{"type": "string", "maxLength": max_string_length},
                      {"type": "integer", "minimum": -999, "maximum": 999},
                      {"type": "boolean"}, {"type": "null"}]}


# Keywords whose values are schemas that can be bounded without admitting new instances.
_SUBSCHEMAS = ("items", "additionalProperties", "anyOf", "allOf", "prefixItems")
