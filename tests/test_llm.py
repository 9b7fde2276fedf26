"""The vLLM-shaped API: generate, chat, stop conditions, seeds, logprobs, sampling filters."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from llmsys import LLM, SamplingParams
from llmsys.engine.sampler import make_generator, sample
from llmsys.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = make_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("qwen3"))
    return LLM(path, dtype="float32")


def test_generate_strings_and_token_ids(llm):
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(temperature=0, max_tokens=16,
                                                             ignore_eos=True))
    assert len(outs) == 2
    assert outs[0].prompt_token_ids == llm.tokenizer.encode("Hello")
    assert outs[1].prompt_token_ids == [1, 2, 3] and outs[1].prompt is None
    for out in outs:
        assert len(out.token_ids) == 16 and out.finish_reason == "length"
        assert out.text == llm.tokenizer.decode(out.token_ids)
    # A single prompt (not in a list) works too, and greedy is deterministic.
    again = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    assert again[0].token_ids == outs[0].token_ids


def test_eos_and_stop_token_ids_end_with_stop(llm):
    greedy = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8,
                                                      ignore_eos=True))[0]
    third = greedy.token_ids[2]
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8,
                                                   stop_token_ids=[third]))[0]
    first = greedy.token_ids.index(third)
    assert out.token_ids == greedy.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == third
    # The model's EOS ends generation (and is kept in token_ids) unless ignore_eos.
    saved = llm.eos_token_ids
    llm.eos_token_ids = {third}
    try:
        out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8))[0]
        assert out.finish_reason == "stop" and out.token_ids == greedy.token_ids[:first + 1]
        out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8,
                                                       ignore_eos=True))[0]
        assert out.token_ids == greedy.token_ids
    finally:
        llm.eos_token_ids = saved


def test_stop_string_is_cut_from_text(llm):
    full = llm.generate(["Once"], SamplingParams(temperature=0, max_tokens=24,
                                                 ignore_eos=True))[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    out = llm.generate(["Once"], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                                stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert out.text == full.text[:full.text.find(stop)]
    assert stop not in out.text
    # Streaming shows exactly the same text, never a piece of the stop string.
    events = list(llm.stream("Once", SamplingParams(temperature=0, max_tokens=24,
                                                    ignore_eos=True, stop=[stop])))
    assert "".join(e.text for e in events) == out.text
    assert [e.token_id for e in events] == out.token_ids
    assert events[-1].finish_reason == "stop" and events[-1].stop_reason == stop


def test_generation_config_gives_the_defaults(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path)
    config = json.loads((path / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    (path / "generation_config.json").write_text(json.dumps(config))
    llm = LLM(path)
    params = llm.default_sampling_params()
    assert (params.temperature, params.top_k, params.top_p) == (0.7, 20, 0.9)
    assert llm.eos_token_ids == set(config["eos_token_id"])
    config["do_sample"] = False
    (path / "generation_config.json").write_text(json.dumps(config))
    assert LLM(path).default_sampling_params().temperature == 0


def test_seed_reproducible_and_independent(llm):
    p = SamplingParams(temperature=1.0, max_tokens=12, seed=1234, ignore_eos=True)
    a = llm.generate(["abc"], p)[0].token_ids
    b = llm.generate(["zzz", "abc"], p)[1].token_ids  # other requests do not disturb it
    c = llm.generate(["abc"], SamplingParams(temperature=1.0, max_tokens=12, seed=99,
                                             ignore_eos=True))[0].token_ids
    assert a == b
    assert a != c


def test_prompt_logprobs_and_logprobs_format(llm):
    ids = [10, 20, 30, 40]
    out = llm.generate([ids], SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=5,
                                             logprobs=2, ignore_eos=True))[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for t in range(1, len(ids)):
        entry = out.prompt_logprobs[t]
        assert ids[t] in entry and 5 <= len(entry) <= 6
        ranks = sorted(lp.rank for tok, lp in entry.items() if tok != ids[t] or
                       entry[tok].rank <= 5)
        assert ranks[:5] == [1, 2, 3, 4, 5]
    assert len(out.logprobs) == 3
    for tok, entry in zip(out.token_ids, out.logprobs):
        assert entry[tok].rank == 1  # greedy picks the top token
        assert abs(sum(torch.tensor(lp.logprob).exp().item() for lp in entry.values())) <= 1.0
    assert out.outputs[0].cumulative_logprob == pytest.approx(
        sum(e[t].logprob for e, t in zip(out.logprobs, out.token_ids)))


def test_logprobs_are_of_the_full_forward(llm):
    """Generated-token logprobs equal those of one forward over prompt + completion."""
    ids = [3, 1, 4, 1, 5]
    out = llm.generate([ids], SamplingParams(max_tokens=4, temperature=0, logprobs=0,
                                             ignore_eos=True))[0]
    full = ids + out.token_ids
    with torch.no_grad():
        lp = llm.model(torch.tensor([full]), torch.arange(len(full))[None]).log_softmax(-1)[0]
    for i, tok in enumerate(out.token_ids):
        assert out.logprobs[i][tok].logprob == pytest.approx(
            lp[len(ids) - 1 + i, tok].item(), abs=1e-4)


def test_chat_uses_the_template(llm):
    messages = [{"role": "user", "content": "hi"}]
    out = llm.chat(messages, SamplingParams(max_tokens=8, temperature=0))[0]
    rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert out.prompt == rendered and rendered.endswith("<|im_start|>assistant\n")
    assert out.prompt_token_ids == llm.tokenizer.encode(rendered, add_special_tokens=False)
    two = llm.chat([messages, messages], SamplingParams(max_tokens=4, temperature=0))
    assert len(two) == 2 and two[0].token_ids == two[1].token_ids


def test_n_samples_and_stream(llm):
    out = llm.generate(["x"], SamplingParams(n=3, max_tokens=5, seed=0, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    streamed = list(llm.stream("x", SamplingParams(temperature=0, max_tokens=6,
                                                   ignore_eos=True)))
    greedy = llm.generate("x", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert [e.token_id for e in streamed] == greedy.token_ids
    assert "".join(e.text for e in streamed) == greedy.text
    assert streamed[-1].finish_reason == "length"


def test_context_limit_ends_with_length(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path, max_position_embeddings=16)
    llm = LLM(path, dtype="float32")
    out = llm.generate([list(range(10))], SamplingParams(max_tokens=100, ignore_eos=True))[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


# ---- the sampler against exact distributions ------------------------------------------

def _frequencies(logits, params, draws=4000):
    gen = make_generator(0)
    counts = collections.Counter(sample(logits, params, gen) for _ in range(draws))
    return {t: c / draws for t, c in counts.items()}


def test_sampler_filters_match_their_definitions():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    probs = logits.softmax(-1)
    # top_k=2: only the two best, renormalised.
    freq = _frequencies(logits, SamplingParams(top_k=2))
    assert set(freq) == {0, 1}
    assert freq[0] == pytest.approx((probs[0] / probs[:2].sum()).item(), abs=0.03)
    # top_p: the smallest prefix of the sorted distribution reaching p.
    p = probs[:2].sum().item() + 0.01
    assert set(_frequencies(logits, SamplingParams(top_p=p))) == {0, 1, 2}
    # min_p: tokens with prob >= min_p * max prob.
    allowed = {i for i in range(6) if probs[i] >= 0.3 * probs[0]}
    assert set(_frequencies(logits, SamplingParams(min_p=0.3))) == allowed
    # temperature sharpens: at T=0.5 frequencies follow softmax(logits / 0.5).
    freq = _frequencies(logits, SamplingParams(temperature=0.5))
    expected = (logits / 0.5).softmax(-1)
    for t, f in freq.items():
        assert f == pytest.approx(expected[t].item(), abs=0.03)
    # Greedy is exact argmax.
    assert sample(logits, SamplingParams(temperature=0), make_generator(0)) == 0


def test_min_tokens_bars_eos(llm):
    greedy = llm.generate([[9, 8, 7]], SamplingParams(temperature=0, max_tokens=6,
                                                      ignore_eos=True))[0]
    first = greedy.token_ids[0]
    saved = llm.eos_token_ids
    llm.eos_token_ids = {first}
    try:
        stopped = llm.generate([[9, 8, 7]], SamplingParams(temperature=0, max_tokens=6))[0]
        assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
        held = llm.generate([[9, 8, 7]], SamplingParams(temperature=0, max_tokens=6,
                                                        min_tokens=3, logprobs=0))[0]
        assert first not in held.token_ids[:3] and len(held.token_ids) >= 3
        # Logprobs stay those of the raw distribution: the barred token was the most likely.
        assert held.logprobs[0][held.token_ids[0]].rank == 2
    finally:
        llm.eos_token_ids = saved
