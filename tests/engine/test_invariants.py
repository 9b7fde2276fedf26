"""Property test: after any sequence of adds, steps and aborts, every KV block is free,
cached, or referenced by exactly the sequences whose tables hold it; nothing leaks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsys import LLM, SamplingParams
from llmsys.testing import make_tiny_checkpoint

operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 40), st.integers(1, 12), st.integers(0, 3)),
    st.tuples(st.just("step"), st.integers(1, 4)),
    st.tuples(st.just("abort"), st.integers(0, 30)),
), min_size=1, max_size=25)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint("mistral", tmp_path_factory.mktemp("m"), hidden_size=32,
                                intermediate_size=64, num_attention_heads=4,
                                num_key_value_heads=2, sliding_window=10, vocab_size=600)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, caching=st.booleans(), block_size=st.sampled_from([1, 2, 4]),
       budget=st.sampled_from([4, 16, 64]))
def test_blocks_are_never_lost_or_shared_wrongly(checkpoint, ops, caching, block_size, budget):
    llm = LLM(checkpoint, dtype="float32", block_size=block_size, num_kv_blocks=48,
              max_num_batched_tokens=budget, max_num_seqs=4, enable_prefix_caching=caching)
    engine, added = llm.engine, 0
    for op in ops:
        if op[0] == "add":
            _, length, max_tokens, family = op
            prompt = [(family * 7 + i) % 50 for i in range(length)]  # shared prefixes
            params = SamplingParams(temperature=0, max_tokens=max_tokens, n=1 + family % 2,
                                    ignore_eos=True)
            try:
                engine.add_request(f"r{added}", prompt, params)
            except ValueError as e:  # refused up front: it could never fit the cache
                assert "KV cache" in str(e) and f"r{added}" not in engine.requests
            added += 1
        elif op[0] == "step":
            for _ in range(op[1]):
                engine.step()
        else:
            engine.abort(f"r{op[1]}")
        live = [s for r in engine.requests.values() for s in r.seqs if not s.is_finished]
        engine.blocks.check_invariants(live)
        assert all(s.status.value == "waiting" or s in engine.scheduler.running for s in live)
        assert not any(s.block_table for s in engine.scheduler.waiting)
    while engine.has_unfinished():
        engine.step()
    engine.blocks.check_invariants([])
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert not engine.requests
