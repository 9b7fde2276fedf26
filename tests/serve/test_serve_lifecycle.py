"""The server's life around requests: a client that leaves mid-request has it aborted and
its KV blocks freed, /metrics parses as Prometheus text and counts what happened, and
`llmsys serve` (a subprocess) prints its URL and shuts down gracefully on SIGTERM/SIGINT,
finishing the request in flight and releasing its port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_helpers import MODEL, metric, parse_prometheus, sse_events, wait_until

from llmsys.serve.app import WEB_DIR

httpx = pytest.importorskip("httpx")

LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 3000, "ignore_eos": True}


def _metrics(http) -> dict:
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_prometheus(r.text)


def _aborted(http) -> float:
    return metric(_metrics(http), "llmsys:request_success_total", finished_reason="abort")


def _idle(server, http) -> bool:
    """Nothing in the engine, no KV block referenced, and the metrics say so."""
    engine = server.state.serving.llm.engine
    blocks = engine.blocks
    m = _metrics(http)
    return (not engine.requests and not engine.has_unfinished()
            and blocks.num_free_blocks == blocks.num_blocks
            and metric(m, "llmsys:kv_cache_usage_perc") == 0
            and metric(m, "llmsys:num_requests_running") == 0)


def test_disconnect_mid_stream_aborts_and_frees_blocks(server, http):
    wait_until(lambda: _idle(server, http))
    aborted = _aborted(http)
    with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
        lines = (line for line in r.iter_lines() if line)
        for _ in range(3):  # the role chunk and two tokens
            assert next(lines).startswith("data: ")
        assert server.state.serving.llm.engine.requests  # still generating
    wait_until(lambda: _idle(server, http))
    assert _aborted(http) == aborted + 1


def test_disconnect_during_a_non_streaming_request(server, http):
    wait_until(lambda: _idle(server, http))
    aborted = _aborted(http)
    body = json.dumps({**LONG, "n": 2}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: server.state.serving.llm.engine.requests)
    wait_until(lambda: _idle(server, http))
    assert _aborted(http) == aborted + 2  # both choices


def test_disconnect_from_a_multi_prompt_completion_stream(server, http):
    wait_until(lambda: _idle(server, http))
    body = {"model": MODEL, "prompt": ["one", "two"], "max_tokens": 3000, "ignore_eos": True,
            "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert next(line for line in r.iter_lines() if line).startswith("data: ")
    wait_until(lambda: _idle(server, http))


def test_metrics_count_requests(server, http, client, hf_tokenizer):
    wait_until(lambda: _idle(server, http))
    before = _metrics(http)
    prompt = "The quick brown fox jumps over the lazy dog. " * 4  # several full KV blocks
    for _ in range(2):  # the second run finds the prompt in the prefix cache
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5,
                                      extra_body={"ignore_eos": True})
    wait_until(lambda: _idle(server, http))
    after = _metrics(http)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    n_prompt = len(hf_tokenizer(prompt)["input_ids"])
    assert grew("llmsys:prompt_tokens_total") == 2 * n_prompt == 2 * r.usage.prompt_tokens
    assert grew("llmsys:generation_tokens_total") == 10
    assert grew("llmsys:request_success_total", finished_reason="length") == 2
    assert grew("llmsys:prefix_cache_hits_total") >= 32
    assert metric(after, "llmsys:prefix_cache_hit_rate") > 0
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        assert grew(f"llmsys:{name}_count") == 2
    assert grew("llmsys:inter_token_latency_seconds_count") == 8  # 4 steps after the first
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds", "request_queue_time_seconds"):
        buckets = sorted(((float(dict(labels)["le"]), v) for (n, labels), v in after.items()
                          if n == f"llmsys:{name}_bucket"))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == float("inf")
        assert buckets[-1][1] == metric(after, f"llmsys:{name}_count")
        assert metric(after, f"llmsys:{name}_sum") >= 0
    assert all(labels and dict(labels)["model_name"] == MODEL for _, labels in after)


def test_an_engine_failure_ends_requests_cleanly(checkpoint):
    """A failing engine step (a bug, a device fault) ends the requests in flight with a
    500 / an error event, frees their blocks, and the server goes on serving."""
    from llmsys.serve import BackgroundServer, ServerConfig
    from llmsys.serve.app import load_model

    fault = threading.Event()
    config = ServerConfig(model=str(checkpoint), port=0, served_model_name=MODEL)

    def load():
        llm = load_model(config)
        step = llm.engine.step

        def faulty_step():
            if fault.is_set():
                fault.clear()
                raise RuntimeError("simulated fault")
            return step()

        llm.engine.step = faulty_step
        return llm

    with BackgroundServer(config, load=load) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            lines = (line for line in r.iter_lines() if line)
            assert next(lines).startswith("data: ")
            fault.set()
            events = sse_events(lines)
        assert events[-1] == "[DONE]"
        error = events[-2]["error"]
        assert error["type"] == "server_error" and "simulated fault" in error["message"]
        fault.set()
        r = http.post("/v1/chat/completions", json={**LONG, "max_tokens": 50})
        assert r.status_code == 500 and "simulated fault" in r.json()["error"]["message"]
        wait_until(lambda: _idle(server, http))
        assert http.post("/v1/chat/completions", json={**LONG, "max_tokens": 5}).is_success


def test_playground_page(http):
    r = http.get("/")
    if (WEB_DIR / "index.html").is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    else:
        assert r.status_code == 404 and "playground" in r.json()["error"]["message"]


# ---- the command line --------------------------------------------------------------------

def _start_cli(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmsys.cli", "serve", "--model", str(checkpoint), "--port", "0",
         "--served-model-name", MODEL], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "ready:" in line:
            url = line.split(" at ")[1].split()[0].removesuffix("/v1")
            return proc, url
        assert time.monotonic() < deadline
    raise AssertionError(f"llmsys serve exited with {proc.wait()} before it was ready")


def _stream_through_shutdown(url: str, stop) -> list:
    """Start a streamed request, call `stop()` while it is in flight, return its events."""
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok"}
        body = {**LONG, "max_tokens": 100, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = (line for line in r.iter_lines() if line)
            assert next(lines).startswith("data: ")
            stop()
            return sse_events(lines)


def _ran_to_its_end(events: list) -> bool:
    finish = [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"]]
    return events[-1] == "[DONE]" and finish[-1] == "length"


def _port_is_free(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:  # nothing listens on the port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        s.bind((host, int(port)))


def test_cli_serves_and_shuts_down_gracefully_on_sigterm(checkpoint):
    proc, url = _start_cli(checkpoint)
    try:
        events = _stream_through_shutdown(url, lambda: proc.send_signal(signal.SIGTERM))
        assert _ran_to_its_end(events)  # the request in flight was finished
        assert proc.wait(timeout=30) == 0
        assert "shut down" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _port_is_free(url)


def test_run_server_shuts_down_gracefully_on_sigint(checkpoint):
    """`run_server` in this (the main) thread; Ctrl-C arrives while a request streams."""
    from concurrent.futures import ThreadPoolExecutor

    from llmsys.serve import ServerConfig, run_server

    said: list[str] = []
    ready = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        if "ready:" in line:
            ready.set()

    def client() -> tuple[str, list]:
        assert ready.wait(60)
        url = said[-1].split(" at ")[1].split()[0].removesuffix("/v1")
        return url, _stream_through_shutdown(url, lambda: os.kill(os.getpid(), signal.SIGINT))

    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(client)
        run_server(ServerConfig(model=str(checkpoint), port=0, served_model_name=MODEL), say)
        url, events = result.result(timeout=60)
    assert _ran_to_its_end(events) and said[-1] == "llmsys serve: shut down"
    _port_is_free(url)
