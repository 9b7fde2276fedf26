"""Bad input over real HTTP (httpx): every mistake gets its 4xx status and an OpenAI-style
error body naming the value, never a 500 or a hang. Also API keys, body size, concurrency
limits, readiness (503 while loading) and a model that fails to load."""

from __future__ import annotations

import threading

import pytest
from serve_helpers import CONTEXT, MODEL, wait_until

from llmsys.serve import BackgroundServer, ServerConfig
from llmsys.serve.app import load_model

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def assert_error(r: httpx.Response, status: int, *mentions: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    for word in mentions:
        assert word in error["message"], (word, error["message"])
    return error


BAD_CHAT = {
    "temperature not a number": ({"temperature": "hot"}, "temperature"),
    "temperature too high": ({"temperature": 5}, "temperature"),
    "n zero": ({"n": 0}, "n"),
    "n not an integer": ({"n": 1.5}, "n"),
    "max_tokens zero": ({"max_tokens": 0}, "max_tokens"),
    "max_tokens a string": ({"max_tokens": "10"}, "max_tokens"),
    "no messages": ({"messages": []}, "messages"),
    "bad role": ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    "image part": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, "image_url"),
    "top_logprobs too many": ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "top_logprobs without logprobs": ({"top_logprobs": 2}, "logprobs"),
    "stream_options without stream": ({"stream_options": {"include_usage": True}},
                                      "stream_options"),
    "unsupported penalty": ({"presence_penalty": 0.5}, "presence_penalty"),
    "logit_bias": ({"logit_bias": {"1": 5}}, "logit_bias"),
    "empty stop string": ({"stop": [""]}, "stop"),
    "min_tokens above max_tokens": ({"min_tokens": 5}, "min_tokens"),
    "tool_choice without tools": ({"tool_choice": "required"}, "tools"),
    "unknown tool_choice": ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    "named tool not in tools": ({"tools": TOOLS, "tool_choice": {
        "type": "function", "function": {"name": "g"}}}, "'g'"),
    "bad tool name": ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "name"),
    "json_schema without schema": ({"response_format": {"type": "json_schema",
                                                        "json_schema": {"name": "x"}}},
                                   "schema"),
    "invalid json schema": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "no-such-type"}}}}, "no-such-type"),
    "invalid regex": ({"structured_outputs": {"regex": "(unclosed"}}, "regex"),
    "two constraints": ({"guided_regex": "a", "guided_choice": ["a"]}, "guided"),
    "structured outputs with a forced tool": (
        {"tools": TOOLS, "tool_choice": "required", "guided_choice": ["a"]}, "tool_choice"),
    "too many choices": ({"n": 9}, "max_n"),
    "max_tokens beyond the context": ({"max_tokens": CONTEXT}, "max_model_len"),
    "prompt beyond the context": (
        {"messages": [{"role": "user", "content": "word " * CONTEXT}]}, "context"),
    "unknown chat template variable type": ({"chat_template_kwargs": "x"},
                                            "chat_template_kwargs"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHAT))
def test_bad_chat_requests_are_400(http, case):
    change, mention = BAD_CHAT[case]
    r = http.post("/v1/chat/completions", json={**CHAT, **change})
    error = assert_error(r, 400, mention)
    assert error["type"] == "invalid_request_error"


BAD_COMPLETION = {
    "empty prompt list": ({"prompt": []}, "prompt"),
    "mixed prompt list": ({"prompt": ["a", [1, 2]]}, "token ids"),
    "token id out of range": ({"prompt": [1, 2, 10**6]}, "out of range"),
    "negative token id": ({"prompt": [[-1]]}, "out of range"),
    "empty text prompt": ({"prompt": ""}, "empty"),
    "logprobs too many": ({"logprobs": 21}, "logprobs"),
    "suffix": ({"suffix": "x"}, "suffix"),
    "best_of": ({"best_of": 3}, "best_of"),
    "n times prompts above max_n": ({"prompt": ["a", "b", "c"], "n": 3}, "max_n"),
    "seed too large": ({"seed": 2**64}, "seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMPLETION))
def test_bad_completion_requests_are_400(http, case):
    change, mention = BAD_COMPLETION[case]
    assert_error(http.post("/v1/completions", json={**COMPLETION, **change}), 400, mention)


def test_malformed_bodies_are_400(http):
    headers = {"content-type": "application/json"}
    assert_error(http.post("/v1/chat/completions", content=b"{not json", headers=headers), 400,
                 "JSON")
    assert_error(http.post("/v1/chat/completions", content=b"[1, 2]", headers=headers), 400)
    assert_error(http.post("/v1/chat/completions", content=b"", headers=headers), 400)
    assert_error(http.post("/v1/completions", json={"max_tokens": 2}), 400, "'prompt'")


def test_tokenize_detokenize(http, hf_tokenizer):
    r = http.post("/tokenize", json={"model": MODEL, "prompt": "Hello, world"})
    assert r.status_code == 200
    body = r.json()
    assert body["tokens"] == hf_tokenizer("Hello, world")["input_ids"]
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == CONTEXT
    messages = [{"role": "user", "content": "hi"}]
    r = http.post("/tokenize", json={"messages": messages})
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    assert r.json()["tokens"] == hf_tokenizer(expected, add_special_tokens=False)["input_ids"]
    r = http.post("/detokenize", json={"tokens": body["tokens"]})
    assert r.status_code == 200 and r.json() == {"prompt": "Hello, world"}
    assert_error(http.post("/detokenize", json={"tokens": [10**7]}), 400, "out of range")
    assert_error(http.post("/tokenize", json={}), 400, "prompt")
    assert_error(http.post("/tokenize", json={"prompt": "a", "messages": messages}), 400)


def test_unknown_model_and_routes_are_404(http, client):
    error = assert_error(http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}),
                         404, "gpt-9", MODEL)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert_error(http.post("/v1/completions", json={**COMPLETION, "model": "x"}), 404, "'x'")
    assert_error(http.get("/v1/models/x"), 404)
    assert http.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_error(http.get("/v1/nothing"), 404, "/v1/nothing")
    assert_error(http.get("/v1/chat/completions"), 405, "GET")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=CHAT["messages"])
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].max_model_len == CONTEXT


def test_the_openai_client_sees_400s(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT["messages"], max_tokens=0)
    assert "max_tokens" in str(info.value)


# ---- a server with limits and API keys -----------------------------------------------------

@pytest.fixture(scope="module")
def limited(checkpoint):
    config = ServerConfig(model=str(checkpoint), port=0, served_model_name=MODEL,
                          api_keys=["key-one", "key-two"], max_body_bytes=4096,
                          max_concurrent_requests=1, graceful_shutdown_s=5)
    with BackgroundServer(config) as server:
        yield server


def test_api_keys(limited):
    with httpx.Client(base_url=limited.url, timeout=30) as http:
        assert_error(http.post("/v1/chat/completions", json=CHAT), 401, "API key")
        error = assert_error(http.get("/v1/models", headers={"authorization": "Bearer nope"}),
                             401)
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
        assert_error(http.get("/v1/models", headers={"authorization": "Basic key-one"}), 401)
        assert_error(http.post("/tokenize", json={"prompt": "a"}), 401)
        assert http.get("/health").status_code == 200  # open for load balancers
        assert http.get("/metrics").status_code == 200  # and scrapers
        assert http.get("/v1/models", headers={"authorization": "Bearer key-one"}).is_success
    client = openai.OpenAI(base_url=limited.base_url, api_key="key-two", max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=CHAT["messages"],
                                          max_tokens=2).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=limited.base_url, api_key="wrong",
                      max_retries=0).models.list()


def test_oversized_bodies_are_413(limited):
    headers = {"authorization": "Bearer key-one"}
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    with httpx.Client(base_url=limited.url, timeout=30, headers=headers) as http:
        error = assert_error(http.post("/v1/chat/completions", json=big), 413, "4096")
        assert error["code"] == "request_too_large"

        def chunks():  # no content-length: the limit is counted as the body streams in
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'

        assert_error(http.post("/v1/chat/completions", content=chunks(),
                               headers={"content-type": "application/json"}), 413)
        assert http.post("/v1/chat/completions", json=CHAT).is_success  # still serving


def test_too_many_concurrent_requests_are_429(limited):
    headers = {"authorization": "Bearer key-one"}
    long = {**CHAT, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=limited.url, timeout=30, headers=headers) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as stream:
            lines = (line for line in stream.iter_lines() if line)
            assert next(lines).startswith("data: ")  # the request is in flight
            error = assert_error(http.post("/v1/chat/completions", json=CHAT), 429,
                                 "max_concurrent_requests")
            assert error["type"] == "rate_limit_error"
        engine = limited.state.serving.engine  # closing the stream aborted the request
        wait_until(lambda: engine.num_in_flight == 0)
        assert http.post("/v1/chat/completions", json=CHAT).is_success


# ---- readiness and load failures -----------------------------------------------------------

def test_503_until_the_model_is_loaded(checkpoint):
    release = threading.Event()
    config = ServerConfig(model=str(checkpoint), port=0, served_model_name=MODEL)

    def slow_load():
        assert release.wait(30)
        return load_model(config)

    with BackgroundServer(config, load=slow_load, wait_ready=False) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            error = assert_error(http.get("/health"), 503, "loading")
            assert error["type"] == "service_unavailable_error"
            assert_error(http.post("/v1/chat/completions", json=CHAT), 503, "loading")
            assert_error(http.get("/v1/models"), 503)
            assert http.get("/metrics").status_code == 200
            release.set()
            assert server.ready.wait(30)
            assert http.get("/health").json() == {"status": "ok"}
            assert http.post("/v1/chat/completions", json=CHAT).is_success


def test_a_model_that_fails_to_load(tmp_path):
    from llmsys.cli import main
    from llmsys.errors import CheckpointError

    with pytest.raises(CheckpointError):
        with BackgroundServer(ServerConfig(model=str(tmp_path / "missing"), port=0)):
            pass
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2


# ---- whatever arrives, the answer is a 200 or a 4xx -----------------------------------------

def test_fuzzed_requests_never_get_a_500(http):
    """Random values for every field (the reply kept short): never a 5xx, always a body."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    values = st.recursive(
        st.none() | st.booleans() | st.integers(-3, 40) | st.floats(-3, 3, allow_nan=False)
        | st.text(max_size=6) | st.sampled_from(["auto", "none", "required", "text", "user"]),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["type", "name", "role", "content", "function", "schema",
                             "json_schema", "regex", "choice", "include_usage"]), inner,
            max_size=3),
        max_leaves=8)
    fields = ["messages", "prompt", "n", "temperature", "top_p", "top_k", "min_p", "stop",
              "seed", "stream", "stream_options", "logprobs", "top_logprobs", "echo",
              "response_format", "tools", "tool_choice", "structured_outputs", "min_tokens",
              "stop_token_ids", "ignore_eos", "guided_choice", "parallel_tool_calls"]
    body = st.dictionaries(st.sampled_from(fields), values, max_size=5)

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(body, st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
                      st.booleans())
    def check(fields: dict, route: str, valid_base: bool) -> None:
        base = (CHAT if route.endswith("chat/completions") else COMPLETION) if valid_base else {}
        r = http.post(route, json={**base, **fields, "max_tokens": 3})
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert r.json()["error"]["message"]

    check()
