"""Structured outputs on a tiny RANDOM model: only the grammar can make its outputs valid, so
every output is checked against a trusted reference (jsonschema, Python's `re`, the choice
list). Also: seeds are independent of the batch and of preemption, logprobs stay raw, bad
schemas are refused when the request is added, and stop conditions keep working.

    pytest tests/engine/test_grammar.py
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from llmsys import LLM, SamplingParams, StructuredOutputsParams
from llmsys.testing import make_tiny_checkpoint

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from llmsys.engine.grammar import GrammarCompiler, limit_json_schema  # noqa: E402

# Nested objects, arrays, enums, numbers, required fields, $defs / $ref, a nullable field.
PERSON = {
    "$defs": {
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"enum": ["FR", "DE", "US"]},
            },
            "required": ["city", "country"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "height": {"type": "number", "minimum": 0.5, "maximum": 2.5},
        "member": {"type": "boolean"},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                 "minItems": 1, "maxItems": 3},
        "home": {"$ref": "#/$defs/address"},
        "scores": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                   "maxItems": 4},
        "nickname": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
    },
    "required": ["name", "age", "role", "home", "tags"],
    "additionalProperties": False,
}
PROMPT = "Describe a person as JSON."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("grammar"))


@pytest.fixture(scope="module")
def llm(checkpoint):
    return LLM(checkpoint, dtype="float32")


def _params(so: StructuredOutputsParams, **kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 1.0, "max_tokens": 256, **kw},
                          structured_outputs=so)


def _assert_valid_json(outs, schema):
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.Draft202012Validator(schema).validate(json.loads(out.text))


# ---- the params ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of"),
    ({"json": {"type": "object"}, "regex": "a+"}, "exactly one of"),
    ({"json": "{not json"}, "not valid JSON"),
    ({"json": "[1, 2]"}, "must be a JSON schema object"),
    ({"json": 3}, "must be a JSON schema object"),
    ({"regex": ""}, "regex=''"),
    ({"choice": []}, "choice=[]"),
    ({"choice": ["a", 1]}, "non-empty strings"),
    ({"grammar": "  "}, "grammar="),
    ({"json_object": "yes"}, "json_object='yes'"),
])
def test_params_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StructuredOutputsParams(**kwargs)


def test_json_given_as_text_is_parsed_and_wrong_field_type_refused():
    so = StructuredOutputsParams(json=json.dumps(PERSON))
    assert so.json == PERSON
    with pytest.raises(ValueError, match="structured_outputs="):
        SamplingParams(structured_outputs={"json": PERSON})


# ---- outputs follow the grammar ----------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_validate(llm, temperature):
    so = StructuredOutputsParams(json=PERSON)
    params = [_params(so, temperature=temperature, seed=i, top_k=50 * (i % 2))
              for i in range(6)]
    outs = llm.generate([PROMPT] * len(params), params)
    _assert_valid_json(outs, PERSON)
    assert all(" " not in o.text.split('"')[0] for o in outs)  # no whitespace before a key
    if temperature:
        assert len({o.text for o in outs}) > 1  # sampling explores the grammar


def test_json_object_gives_objects(llm):
    # Any JSON object: nothing bounds its strings, so a random model may run to max_tokens.
    so = StructuredOutputsParams(json_object=True)
    outs = llm.generate([PROMPT] * 16, [_params(so, seed=i, max_tokens=128) for i in range(16)])
    ended = [json.loads(o.text) for o in outs if o.finish_reason == "stop"]
    assert len(ended) >= 6 and all(isinstance(v, dict) for v in ended)
    assert any(ended), "expected some non-empty objects"
    for out in outs:
        assert out.text.startswith("{") and (out.finish_reason == "stop"
                                             or len(out.token_ids) == 128)


def test_regex_choice_and_grammars(llm):
    cases = [
        (StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2,5}"), r"[0-9]{3}-[a-z]{2,5}"),
        (StructuredOutputsParams(regex=r"(yes|no), because [a-c]+\."), None),
        (StructuredOutputsParams(grammar='start: "(" num ("+" num)* ")"\nnum: /[0-9]{1,3}/'),
         r"\([0-9]{1,3}(\+[0-9]{1,3})*\)"),
        (StructuredOutputsParams(grammar='root ::= "x" ("ab" | "cd")+ "y"'), r"x(ab|cd)+y"),
    ]
    prompts, params, patterns = [], [], []
    for so, pattern in cases:
        for seed in range(4):
            prompts.append(PROMPT)
            params.append(_params(so, seed=seed, max_tokens=64))
            patterns.append(pattern or so.regex)
    choice = ["red", "green", "café crème", 'say "hi"\n']
    for seed in range(12):
        prompts.append(PROMPT)
        params.append(_params(StructuredOutputsParams(choice=choice), seed=seed))
    outs = llm.generate(prompts, params)
    for out, pattern in zip(outs, patterns):
        assert re.fullmatch(pattern, out.text), (pattern, out.text)
        # "(yes|no), because [a-c]+\." can always go on: there it ends at EOS, else by itself
        assert out.finish_reason == "stop"
    picked = [o.text for o in outs[len(patterns):]]
    assert set(picked) <= set(choice) and len(set(picked)) > 1


def test_n_samples_each_follow_the_grammar(llm):
    so = StructuredOutputsParams(json=PERSON)
    out = llm.generate(PROMPT, _params(so, n=3, seed=5))[0]
    assert len(out.outputs) == 3
    _assert_valid_json(out.outputs, PERSON)


def test_unbounded_schema_limited_still_validates_against_the_original(llm):
    schema = {"type": "object", "properties": {
        "title": {"type": "string"}, "count": {"type": "integer"}, "ratio": {"type": "number"},
        "items": {"type": "array", "items": {"type": "string"}}, "extra": {},
        "meta": {"type": "object"}}, "required": ["title", "count", "ratio", "items", "meta"]}
    limited = limit_json_schema(schema, max_string_length=8, max_items=3)
    so = StructuredOutputsParams(json=limited)
    outs = llm.generate([PROMPT] * 6, [_params(so, seed=i) for i in range(6)])
    _assert_valid_json(outs, schema)
    for out in outs:
        value = json.loads(out.text)
        assert len(value["title"]) <= 8 and len(value["items"]) <= 3


# ---- batching, seeds, preemption ---------------------------------------------------------

def test_seeded_output_is_independent_of_the_batch(llm, checkpoint):
    so = StructuredOutputsParams(json=PERSON)
    target = _params(so, seed=42, top_p=0.9)
    batch = [("Some other, longer prompt that comes first.",
              _params(StructuredOutputsParams(regex=r"[a-z]{1,20}"), seed=1)),
             ("x", SamplingParams(temperature=1.0, seed=2, max_tokens=40)),  # unconstrained
             (PROMPT, target),
             ("y", _params(StructuredOutputsParams(json_object=True), seed=3)),
             ("z", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))]
    batched = llm.generate([p for p, _ in batch], [s for _, s in batch])
    # Each request, constrained or not, gives alone what it gave in the mixed batch.
    for (prompt, params), out in zip(batch, batched):
        assert llm.generate(prompt, params)[0].token_ids == out.token_ids
    _assert_valid_json([batched[2]], PERSON)
    # Under heavy preemption (recompute from the kept tokens) the outputs stay identical.
    tight = LLM(checkpoint, dtype="float32", block_size=4, num_kv_blocks=80, max_num_seqs=8)
    params = [_params(so, seed=s) for s in range(8)]
    expected = llm.generate([PROMPT] * 8, params)
    got = tight.generate([PROMPT] * 8, params)
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    _assert_valid_json(got, PERSON)


# ---- logprobs, stops, limits -------------------------------------------------------------

def test_logprobs_are_those_of_the_raw_distribution(llm):
    so = StructuredOutputsParams(json=PERSON)
    out = llm.generate(PROMPT, _params(so, temperature=0, logprobs=3, max_tokens=12))[0]
    prompt_ids = llm.tokenizer.encode(PROMPT)
    ids = prompt_ids + out.token_ids
    with torch.no_grad():
        logits = llm.model(torch.tensor([ids]), torch.arange(len(ids))[None])[0]
    raw = logits[len(prompt_ids) - 1:-1].float().log_softmax(-1)  # predicts each output token
    for pos, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert entry[token].logprob == pytest.approx(float(raw[pos, token]), abs=1e-4)
        assert entry[token].rank == int((raw[pos] > raw[pos, token]).sum()) + 1
    # The grammar forced '{' first, which a random model rarely ranks first.
    assert out.text.startswith('{"name":"')


def test_stop_strings_min_tokens_and_max_tokens_still_work(llm):
    stop = llm.generate(PROMPT, _params(StructuredOutputsParams(regex="xyz[a-z]*"),
                                        stop=["y"]))[0]
    assert stop.text == "x" and stop.finish_reason == "stop" and stop.outputs[0].stop_reason == "y"
    # [a-z]+ may end at any letter (EOS allowed); min_tokens bars EOS for 6 tokens.
    outs = llm.generate([PROMPT] * 6, [_params(StructuredOutputsParams(regex="[a-z]+"), seed=i,
                                               min_tokens=6, max_tokens=30)
                                       for i in range(6)])
    for out in outs:
        assert re.fullmatch("[a-z]+", out.text) and len(out.token_ids) >= 6
    short = llm.generate(PROMPT, _params(StructuredOutputsParams(json=PERSON), max_tokens=5))[0]
    assert short.finish_reason == "length" and len(short.token_ids) == 5
    assert short.text.startswith("{")


def test_grammar_end_stops_the_sequence_even_with_ignore_eos(llm):
    out = llm.generate(PROMPT, _params(StructuredOutputsParams(choice=["done"]),
                                       ignore_eos=True, max_tokens=50))[0]
    assert out.text == "done" and out.finish_reason == "stop"
    assert not set(out.token_ids) & llm.eos_token_ids


# ---- refusal at add time -----------------------------------------------------------------

@pytest.mark.parametrize("so, message", [
    (StructuredOutputsParams(json={"type": "strng"}), "strng"),
    (StructuredOutputsParams(json={"type": "object", "properties": {"a": {"$ref": "#/x"}}}),
     "#/x"),
    (StructuredOutputsParams(json={"type": "integer", "minimum": 5, "maximum": 2}),
     "Unsatisfiable"),
    (StructuredOutputsParams(regex="[a-"), "regex='[a-'"),
    (StructuredOutputsParams(grammar="start: undefined_rule"), "undefined_rule"),
])
def test_invalid_grammar_is_refused_when_added(llm, so, message):
    good = _params(StructuredOutputsParams(regex="[a-z]{3}"), seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        llm.generate([PROMPT, PROMPT], [good, _params(so)])
    with pytest.raises(ValueError, match="structured_outputs"):
        llm.engine.add_request("bad", PROMPT, _params(so))
    assert not llm.engine.has_unfinished() and "bad" not in llm.engine.requests
    assert re.fullmatch("[a-z]{3}", llm.generate(PROMPT, good)[0].text)  # engine still fine


# ---- the matcher and the masks -----------------------------------------------------------

def test_mask_allows_eos_only_where_the_grammar_can_end(llm):
    grammars = GrammarCompiler(llm.tokenizer, llm.config.vocab_size, llm.eos_token_ids)
    matcher = grammars.matcher(StructuredOutputsParams(regex="ab?"))
    eos = sorted(llm.eos_token_ids)
    a, b = llm.tokenizer.token_to_id("a"), llm.tokenizer.token_to_id("b")
    vocab = llm.config.vocab_size
    start = grammars.forbidden_tokens([(1, matcher)], 2, vocab)
    assert not start[0].any()  # an unlisted row allows everything
    assert not start[1, a] and start[1, b] and start[1, eos].all()
    # The per-matcher bitmask agrees with the batched one.
    bitmask = torch.zeros(1, (grammars.ll_tokenizer.vocab_size + 31) // 32, dtype=torch.int32)
    matcher.fill_bitmask(bitmask, 0)
    bits = [(int(bitmask[0, t // 32]) >> (t % 32)) & 1 for t in range(vocab)]
    assert torch.equal(torch.tensor(bits) == 0, start[1])
    assert matcher.accept(a) and not matcher.is_finished
    after_a = grammars.forbidden_tokens([(0, matcher)], 1, vocab)[0]
    assert not after_a[b] and not after_a[eos].any()  # may end here, or add "b"
    assert matcher.accept(b) and matcher.is_finished


def test_grammar_wins_when_min_tokens_bars_all_it_allows(llm):
    # Before min_tokens the stop token is barred, yet the grammar allows nothing else.
    x = llm.tokenizer.token_to_id("x")
    params = _params(StructuredOutputsParams(regex="x{1,8}"), seed=0, min_tokens=4,
                     stop_token_ids=[x], max_tokens=10)
    out = llm.generate(PROMPT, params)[0]
    assert out.token_ids == [x] and out.finish_reason == "stop"
    assert out.outputs[0].stop_reason == x


def test_compiled_grammars_are_cached_and_unconstrained_runs_never_build_them(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path / "m")
    llm = LLM(path, dtype="float32")
    llm.generate([PROMPT] * 3, SamplingParams(temperature=0, max_tokens=8))
    assert llm.engine.grammars is None  # no grammar work at all without constrained requests
    so = StructuredOutputsParams(json=PERSON)
    llm.generate([PROMPT] * 3, [_params(so, seed=i) for i in range(3)])
    llm.generate(PROMPT, _params(StructuredOutputsParams(json=json.dumps(PERSON)), seed=9))
    assert len(llm.engine.grammars._cache) == 1


def test_literal_text_of_added_tokens_can_be_generated(llm):
    """`<tool_call>` is an added (not special) token: a regex that spells it out must let
    the model write it, not stop after it."""
    regex = r'<tool_call>\{"a": [0-9]\}</tool_call>'
    params = SamplingParams(temperature=0, max_tokens=40,
                            structured_outputs=StructuredOutputsParams(regex=regex))
    out = llm.generate(["hi", "call a tool"], params)
    for o in out:
        assert re.fullmatch(regex, o.outputs[0].text), o.outputs[0].text
        assert o.outputs[0].finish_reason == "stop"
