"""Every function schema of the Berkeley Function Calling Leaderboard (BFCL v4) as a
structured-output grammar: converted from BFCL's Python type names to JSON Schema, checked
against the JSON Schema meta-schema, compiled, and used to constrain a tiny RANDOM model to a
call `{"name": ..., "arguments": {...}}` that jsonschema then validates. Only the grammar can
make a random model's output valid, so this checks the grammar on some 3,000 real schemas.

The data lives next to the repository in ../shared/data/bfcl (question files with a
`function` list, and multi_turn_func_doc/ with one function per line); without it the data
tests skip.

    pytest tests/engine/test_bfcl.py -s      # -s prints the counts and the time taken
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from llmsys import LLM, SamplingParams, StructuredOutputsParams
from llmsys.testing import make_tiny_checkpoint

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from llmsys.engine.grammar import (  # noqa: E402
    GrammarCompiler,
    bfcl_to_json_schema,
    limit_json_schema,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bfcl"
# The converted schemas use draft-7 keywords only; its meta-schema checks 7x faster than 2020-12's.
Validator = jsonschema.Draft7Validator


def load_functions(root: Path) -> list[dict]:
    """Every function spec in the question files and the multi-turn function docs."""
    functions = []
    for path in sorted(root.glob("*.json")) + sorted((root / "multi_turn_func_doc").glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if "function" in record:
                functions += record["function"]
            elif "parameters" in record:  # a multi-turn function doc
                functions.append(record)
    return functions


def call_schema(function: dict) -> dict:
    """The JSON Schema of one call to `function`: its name and its arguments."""
    return {"type": "object",
            "properties": {"name": {"const": function["name"]},
                           "arguments": bfcl_to_json_schema(function["parameters"])},
            "required": ["name", "arguments"], "additionalProperties": False}


@pytest.fixture(scope="module")
def calls() -> list[dict]:
    """The distinct call schemas (name + converted parameters) over all BFCL functions."""
    if not DATA.is_dir():
        pytest.skip(f"BFCL data not found at {DATA} (the shared data folder next to the repo)")
    functions = load_functions(DATA)
    assert len(functions) > 1000, f"only {len(functions)} functions found in {DATA}"
    distinct = {}
    for function in functions:
        schema = call_schema(function)
        distinct.setdefault(json.dumps(schema, sort_keys=True), schema)
    print(f"\nBFCL: {len(functions)} function specs, {len(distinct)} distinct call schemas")
    return list(distinct.values())


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    path = make_tiny_checkpoint("llama", tmp_path_factory.mktemp("bfcl"), hidden_size=32,
                                intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1)
    return LLM(path, dtype="float32", max_num_seqs=512, max_num_batched_tokens=4096)


@pytest.fixture
def one_thread():
    """The model is tiny: waking a second intra-op thread for each small matmul costs more
    than it saves (measured: 3-5x the CPU time on 2 cores)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---- the conversion, on its own ----------------------------------------------------------

def test_bfcl_types_become_json_schema():
    spec = {"type": "dict", "required": ["a", "coords"], "properties": {
        "a": {"type": "float", "default": 1.0, "optional": True},
        "coords": {"type": "tuple", "items": {"type": "float"}},
        "count": {"type": "integer", "enum": ["1", "2", "dontcare"]},
        "flag": {"type": "boolean", "enum": ["True", "False", "dontcare"]},
        "kinds": {"type": "array", "items": {"type": "string"}, "enum": ["x", "y"]},
        "anything": {"type": "any"}, "opts": {"type": "dict"}, "name": {"type": "String"},
        "tags": {"type": "list", "items": {"type": "string"}}}}
    schema = bfcl_to_json_schema(spec)
    Validator.check_schema(schema)
    props = schema["properties"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert props["a"] == {"type": "number"}  # default / optional do not constrain
    assert props["coords"] == {"type": "array", "items": {"type": "number"}}
    assert props["count"] == {"enum": ["1", "2", "dontcare"]}  # the enum decides
    assert props["kinds"] == {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}}
    assert props["anything"] == {} and props["opts"] == {"type": "object"}
    assert props["name"] == {"type": "string"} and props["tags"]["type"] == "array"
    ok = {"a": 1.5, "coords": [1.0, 2], "count": "dontcare", "flag": "True", "kinds": ["y"],
          "anything": [None], "opts": {"k": 1}, "name": "n", "tags": []}
    Validator(schema).validate(ok)
    for bad in ({"coords": []}, {**ok, "a": "1.5"}, {**ok, "kinds": ["z"]}, {**ok, "zz": 1}):
        assert not Validator(schema).is_valid(bad)
    with pytest.raises(ValueError, match="'complex' is unknown"):
        bfcl_to_json_schema({"type": "complex"})


# ---- every BFCL schema -------------------------------------------------------------------

def test_every_function_schema_is_valid_json_schema_and_compiles(calls, llm):
    grammars = GrammarCompiler(llm.tokenizer, llm.config.vocab_size, llm.eos_token_ids)
    meta = Validator(Validator.META_SCHEMA)
    start = time.perf_counter()
    for schema in calls:
        meta.validate(schema)
        grammars.matcher(StructuredOutputsParams(json=schema))  # raises if it does not compile
    print(f"\nBFCL: {len(calls)} call schemas are valid JSON Schema and compile "
          f"({time.perf_counter() - start:.1f}s)")


def test_constrained_calls_from_a_random_model_validate(calls, llm, one_thread):
    # Strings, arrays, numbers and free-form values are bounded so that the random model
    # must finish; the outputs are checked against the original (unbounded) schemas.
    # Greedy keeps it fast (sampled decoding under grammars is tested in test_grammar.py).
    params = [SamplingParams(temperature=0, max_tokens=400, structured_outputs=(
        StructuredOutputsParams(json=limit_json_schema(schema, 8, 2)))) for schema in calls]
    start, cpu = time.perf_counter(), time.process_time()
    outs = llm.generate(["Call one of the functions."] * len(calls), params)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    valid = 0
    for schema, out in zip(calls, outs):
        assert out.finish_reason == "stop", (schema["properties"]["name"], out.text)
        call = json.loads(out.text)
        Validator(schema).validate(call)
        assert call["name"] == schema["properties"]["name"]["const"]
        valid += 1
    tokens = sum(len(o.token_ids) for o in outs)
    print(f"\nBFCL: {valid}/{len(calls)} generated calls validate; {tokens} tokens "
          f"in {seconds:.1f}s ({cpu:.1f}s of CPU)")
