"""POST /v1/chat/completions through the official `openai` client against a real server:
non-streaming and streaming agree, n > 1, stop strings, seeds, logprobs, and usage counts
equal the tokenizer's (transformers is the reference)."""

from __future__ import annotations

import json

import pytest
from serve_helpers import MODEL, sse_events

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "The quick brown fox"}]


def _prompt_len(hf_tokenizer, messages, tools=None) -> int:
    text = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                            add_generation_prompt=True)
    return len(hf_tokenizer(text, add_special_tokens=False)["input_ids"])


def _stream_text(client, **kwargs) -> tuple[list[str], list, object]:
    """(content per choice, finish reasons per choice, usage) of a streamed request."""
    n = kwargs.get("n", 1)
    texts, reasons, usage = [""] * n, [None] * n, None
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, usage


def test_chat_usage_matches_the_tokenizer(client, hf_tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.created > 0
    assert r.usage.prompt_tokens == _prompt_len(hf_tokenizer, MESSAGES)
    assert r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert choice.message.tool_calls in (None, [])


def test_streaming_equals_non_streaming(client):
    kwargs = dict(messages=MESSAGES, max_tokens=24, temperature=0)
    full = client.chat.completions.create(model=MODEL, **kwargs)
    texts, reasons, usage = _stream_text(client, stream_options={"include_usage": True},
                                         **kwargs)
    assert texts[0] == full.choices[0].message.content
    assert reasons[0] == full.choices[0].finish_reason
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


def test_sse_wire_format(http):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "n": 2, "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"]
                and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}  # the role comes first
        assert mine[-1]["finish_reason"] == "length" and mine[-1]["delta"] == {}
        assert all(m["finish_reason"] is None for m in mine[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert all("usage" not in c for c in chunks[:-1])


def test_n_choices_and_seeds(client):
    kwargs = dict(messages=MESSAGES, max_tokens=12, temperature=1.0, n=3, seed=1234)
    a = client.chat.completions.create(model=MODEL, **kwargs)
    b = client.chat.completions.create(model=MODEL, **kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]  # same seed, same output
    assert len(set(texts)) > 1  # each choice samples with its own generator
    streamed, _, _ = _stream_text(client, **kwargs)
    assert streamed == texts
    other = client.chat.completions.create(model=MODEL, **{**kwargs, "seed": 99})
    assert [c.message.content for c in other.choices] != texts


def test_stop_strings_cut_the_text(client):
    kwargs = dict(messages=MESSAGES, max_tokens=30, temperature=0,
                  extra_body={"ignore_eos": True})
    text = client.chat.completions.create(model=MODEL, **kwargs).choices[0].message.content
    start = next(i for i in range(4, len(text) - 2)
                 if text[i:i + 2].isprintable() and "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    expected = text[:text.index(stop)]
    r = client.chat.completions.create(model=MODEL, stop=[stop, "never-there"], **kwargs)
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    texts, reasons, _ = _stream_text(client, stop=stop, **kwargs)
    assert texts == [expected] and reasons == ["stop"]


def test_logprobs_greedy_tokens_are_the_top_ones(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry.logprob == pytest.approx(values[0])  # greedy picks the most likely
        assert entry.token == entry.top_logprobs[0].token
        assert entry.bytes == list(entry.token.encode("utf-8"))
    # the streamed logprobs are the same, token by token
    streamed = []
    for chunk in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
            top_logprobs=3, stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            streamed += choice.logprobs.content if choice.logprobs else []
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [
        (e.token, round(e.logprob, 5)) for e in content]


def test_developer_role_and_text_parts(client, hf_tokenizer):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                             {"type": "text", "text": " world"}]}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    reference = [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Hello world"}]
    assert r.usage.prompt_tokens == _prompt_len(hf_tokenizer, reference)


def test_multi_turn_with_tool_results_renders(client, hf_tokenizer):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    reference = [messages[0], {"role": "assistant", "content": "", "tool_calls": [call]},
                 messages[2]]
    assert r.usage.prompt_tokens == _prompt_len(hf_tokenizer, reference)


def test_concurrent_requests_share_the_engine(client, server):
    """Several requests in flight at once are batched together and each gets its own
    answer, the same as alone (greedy)."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Request number {i}" for i in range(6)]

    def ask(p: str) -> str:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=16,
            temperature=0, extra_body={"ignore_eos": True}).choices[0].message.content

    alone = [ask(p) for p in prompts]
    engine = server.state.serving.llm.engine
    step, batch_sizes = engine.step, []

    def recording_step():  # runs in the engine thread
        batch_sizes.append(len(engine.scheduler.running) + len(engine.scheduler.waiting))
        return step()

    engine.step = recording_step
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(ask, prompts))
    finally:
        del engine.step  # back to the class's method
    assert together == alone
    assert max(batch_sizes) > 1  # requests from different connections shared engine steps
