"""The engine against the model-core path: batched greedy decoding equals each prompt run
alone (a full forward per token, no cache), under prefix caching, preemption, chunked
prefill, sliding windows; plus seeds, aborts, admission and window memory."""

from __future__ import annotations

import pytest
import torch

from llmsys import LLM, SamplingParams
from llmsys.testing import make_tiny_checkpoint

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"),
                                num_attention_heads=6, num_key_value_heads=2, hidden_size=48)


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return make_tiny_checkpoint("mistral", tmp_path_factory.mktemp("mistral"), sliding_window=12)


def _prompts(vocab: int, count: int = 32) -> list[list[int]]:
    """Mixed lengths (3..70); every fourth shares a 40-token prefix to exercise the cache."""
    g = torch.Generator().manual_seed(7)
    shared = torch.randint(0, vocab, (40,), generator=g).tolist()
    prompts = []
    for i in range(count):
        length = int(torch.randint(3, 71, (1,), generator=g))
        tail = torch.randint(0, vocab, (length,), generator=g).tolist()
        prompts.append(shared + tail[:length % 20 + 1] if i % 4 == 0 else tail)
    return prompts


@torch.no_grad()
def _alone(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """The model-core path: recompute the whole sequence for every token; greedy."""
    ids, margins = list(prompt), []
    for _ in range(n):
        logits = model(torch.tensor([ids]), torch.arange(len(ids))[None])[0, -1]
        top2 = logits.topk(2).values
        margins.append((top2[0] - top2[1]).item())
        ids.append(int(logits.argmax()))
    return ids[len(prompt):], margins


def _assert_matches(outs, references):
    for out, (tokens, margins) in zip(outs, references):
        for step, (a, b) in enumerate(zip(out.token_ids, tokens)):
            if margins[step] <= 1e-3:
                break  # a near-tie: both continuations are correct from here
            assert a == b, f"step {step}: engine {a}, alone {b}"


ENGINE_SETTINGS = {
    "default": dict(),
    "no-prefix-cache": dict(enable_prefix_caching=False),
    "chunked-16": dict(max_num_batched_tokens=16),
    "preempting": dict(block_size=2, num_kv_blocks=90, max_num_batched_tokens=64),
    "few-seqs": dict(max_num_seqs=3, block_size=4),
}


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("setting", list(ENGINE_SETTINGS))
def test_batch_equals_each_prompt_alone(family, setting, request):
    path = request.getfixturevalue(family)
    llm = LLM(path, dtype="float32", **ENGINE_SETTINGS[setting])
    prompts = _prompts(llm.config.vocab_size)
    references = [_alone(llm.model, p, NEW_TOKENS) for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate(prompts, params)
    assert all(len(o.token_ids) == NEW_TOKENS for o in outs)
    _assert_matches(outs, references)
    if setting == "preempting":
        assert llm.engine.scheduler.num_preemptions > 0
    if setting == "chunked-16":  # later prompts are admitted after the shared prefix is cached
        assert llm.engine.blocks.prefix_hits > 0
    # Nothing leaks: every block is free again once all requests end.
    llm.engine.blocks.check_invariants([])
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks


def test_prompt_logprobs_with_chunked_prefill_match_full_forward(llama):
    llm = LLM(llama, dtype="float32", max_num_batched_tokens=16, block_size=4)
    prompt = _prompts(llm.config.vocab_size)[1]
    out = llm.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=3))[0]
    with torch.no_grad():
        ref = llm.model(torch.tensor([prompt]), torch.arange(len(prompt))[None])
        ref = ref.log_softmax(-1)[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for t in range(1, len(prompt)):
        assert abs(out.prompt_logprobs[t][prompt[t]].logprob - ref[t - 1, prompt[t]]) < 1e-4


def test_prefix_cache_hit_gives_same_output(llama):
    llm = LLM(llama, dtype="float32", block_size=4)
    prompt = _prompts(llm.config.vocab_size)[0]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    first = llm.generate([prompt], params)[0]
    hits = llm.engine.blocks.prefix_hits
    second = llm.generate([prompt], params)[0]
    assert llm.engine.blocks.prefix_hits - hits >= (len(prompt) - 1) // 4 * 4
    assert second.token_ids == first.token_ids


def test_seeded_sampling_is_independent_of_the_batch(llama):
    llm = LLM(llama, dtype="float32")
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=3, ignore_eos=True)
    alone = llm.generate([[5, 6, 7]], params)[0].token_ids
    others = SamplingParams(temperature=1.2, max_tokens=13, ignore_eos=True)
    batch = llm.generate([[1, 2], [5, 6, 7], [9] * 30], [others, params, others])
    assert batch[1].token_ids == alone


def test_abort_frees_blocks_at_any_moment(llama):
    llm = LLM(llama, dtype="float32", max_num_batched_tokens=16, block_size=4)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    for i, p in enumerate(_prompts(llm.config.vocab_size, 6)):
        engine.add_request(f"r{i}", p, params)
    engine.abort("r5")  # still waiting
    engine.step()
    engine.abort("r0")  # mid-prefill (chunked)
    for _ in range(6):
        engine.step()
    engine.abort("r1")  # decoding
    live = [s for r in engine.requests.values() for s in r.seqs if not s.is_finished]
    engine.blocks.check_invariants(live)
    assert not engine.abort("r1") and not engine.abort("nope")
    while engine.has_unfinished():
        engine.step()
    engine.blocks.check_invariants([])
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_request_that_can_never_fit_is_refused(llama):
    llm = LLM(llama, dtype="float32", block_size=4, num_kv_blocks=8)
    with pytest.raises(ValueError, match=r"needs up to \d+ tokens of KV cache .* 8 blocks"):
        llm.generate([[1] * 20], SamplingParams(max_tokens=40))
    out = llm.generate([[1] * 20], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    assert len(out.token_ids) == 12


def test_sliding_window_keeps_kv_memory_bounded(mistral):
    """A 400-token prompt on a window-12 model never holds more than window + chunk."""
    llm = LLM(mistral, dtype="float32", block_size=4, max_num_batched_tokens=32)
    engine = llm.engine
    prompt = torch.randint(0, llm.config.vocab_size, (400,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    engine.add_request("long", prompt, SamplingParams(temperature=0, max_tokens=30,
                                                      ignore_eos=True))
    most = 0
    while engine.has_unfinished():
        engine.step()
        seqs = [s for r in engine.requests.values() for s in r.seqs]
        if seqs:
            most = max(most, sum(b >= 0 for b in seqs[0].block_table))
    assert most <= (12 + 32) // 4 + 2
    tokens, margins = _alone(llm.model, prompt, 30)
    # And the answer is still the full model's.
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    _assert_matches(out, [(tokens, margins)])
