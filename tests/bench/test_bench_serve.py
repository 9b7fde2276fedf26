"""`llmsys bench serve` against scripted streaming servers over real HTTP.

The server delays each token by a known schedule; the tests compare the benchmark's TTFT,
TPOT, ITL, E2EL, token counts, goodput and arrival times with values computed from that
schedule (measured times may only exceed the schedule, by at most a transport allowance),
recompute the aggregate metrics independently from the per-request records, and check
arrival statistics, concurrency caps, failures, cancellation and the written files.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket

import numpy as np
import pytest
from bench_scripted_server import Script, Seen

from llmsys.bench.serve import BenchConfig, arrival_offsets, arrival_times, run_benchmark
from llmsys.bench.serve_metrics import RequestResult, compute_metrics
from llmsys.cli import main

# How late a chunk may reach the client: a few ms on an idle machine, a few hundred when
# other processes keep both cores busy. Being early is impossible (bar timer rounding).
LATE_S = 0.3
EARLY_S = 0.001


def _run(cfg: BenchConfig):
    return asyncio.run(run_benchmark(cfg))


def _schedule(seen: list[Seen]) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT, E2EL (s) and the pooled token gaps the script promises."""
    ttft = np.array([s.ttft_s for s in seen])
    tpot = np.array([s.tpot_s for s in seen])
    n = np.array([s.max_tokens for s in seen])
    return {"ttft": ttft, "tpot": tpot, "e2el": ttft + (n - 1) * tpot,
            "itl": np.repeat(tpot, n - 1)}


def _assert_sorted_close(measured: list[float], expected: np.ndarray, late: float) -> None:
    """Sorting is 1-Lipschitz, so per-request bounds carry over to the sorted values."""
    diff = np.sort(measured) - np.sort(expected)
    assert diff.min() >= -EARLY_S and diff.max() <= late, diff


def test_arrival_gaps_are_exponential_at_burstiness_1_and_gamma_otherwise():
    rng = np.random.default_rng(0)
    rate = 50.0
    for burstiness in (1.0, 0.25, 4.0):
        t = arrival_times(40_000, rate, burstiness, rng)
        gaps = np.diff(t)
        assert t[0] == 0.0 and (gaps >= 0).all()
        assert gaps.mean() == pytest.approx(1 / rate, rel=0.04)
        cv = gaps.std() / gaps.mean()
        assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)
    assert (arrival_times(7, math.inf, 1.0, rng) == 0).all()


def test_arrival_gaps_pass_a_kolmogorov_smirnov_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for burstiness in (1.0, 0.5):
        gaps = np.diff(arrival_times(5_000, 20.0, burstiness, rng))
        scale = 1 / (20.0 * burstiness)
        assert stats.kstest(gaps, "gamma", args=(burstiness, 0, scale)).pvalue > 1e-3
    gaps = np.diff(arrival_times(5_000, 20.0, 1.0, rng))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 20.0)).pvalue > 1e-3


def test_metrics_follow_the_servers_schedule(scripted_server):
    srv = scripted_server(Script(ttft_s=[0.03, 0.3, 0.04, 0.05], tpot_s=[0.01, 0.03, 0.02]))
    cfg = BenchConfig(base_url=srv.url + "/v1", num_prompts=16, request_rate=40.0,
                      input_len=(8, 24), output_len=(10, 16), goodput_ms={"ttft": 200.0},
                      percentiles=(50.0, 90.0, 99.0), seed=5, progress=False)
    out = _run(cfg)
    m = out.metrics
    assert (m.completed, m.failed, m.cancelled) == (16, 0, 0)
    assert out.model == "scripted" and out.prompt_source == "tokens"
    body = srv.seen[0].body
    assert body["stream"] and body["ignore_eos"] and body["stream_options"]["include_usage"]
    assert body["model"] == "scripted" and "prompt" in body

    # Token counts: prompts hold exactly the sampled length; usage gives the totals.
    sampled = sorted(r.prompt_tokens for r in out.results)
    assert sampled == sorted(s.prompt_tokens for s in srv.seen)
    assert all(8 <= n <= 24 for n in sampled)
    assert m.total_input_tokens == sum(s.prompt_tokens for s in srv.seen)
    assert m.total_output_tokens == sum(s.max_tokens for s in srv.seen)
    assert sorted(r.output_tokens for r in out.results) == sorted(s.max_tokens for s in srv.seen)

    # Timings against the schedule: never early, at most LATE_S late.
    want = _schedule(srv.seen)
    ok = out.results
    _assert_sorted_close([r.ttft for r in ok], want["ttft"], LATE_S)
    _assert_sorted_close([r.latency for r in ok], want["e2el"], LATE_S)
    lat = m.latencies_ms
    for name in ("ttft", "e2el"):
        exp_ms = want[name] * 1000
        assert exp_ms.mean() - 1 <= lat[name].mean <= exp_ms.mean() + LATE_S * 1000
        for p in (50, 90, 99):
            got = lat[name].percentiles[f"p{p}"]
            assert np.percentile(exp_ms, p) - 1 <= got <= np.percentile(exp_ms, p) + LATE_S * 1e3
    # TPOT and ITL: two chunks' lags spread over >= 9 gaps.
    decode_tol_ms = LATE_S * 1000 / 9
    assert lat["tpot"].mean == pytest.approx(want["tpot"].mean() * 1000, abs=decode_tol_ms)
    assert lat["itl"].mean == pytest.approx(want["itl"].mean() * 1000, abs=decode_tol_ms)
    assert sum(len(r.itl) for r in ok) == len(want["itl"])

    # Goodput: a TTFT SLO of 200 ms fails the 300 ms requests (passing the others unless
    # the machine is very busy); the count matches the requests' own TTFTs.
    assert m.good_requests == sum(r.ttft <= 0.2 for r in ok)
    assert m.good_requests <= sum(s.ttft_s < 0.2 for s in srv.seen)
    assert m.request_goodput == pytest.approx(m.good_requests / m.duration_s)

    # Arrivals: each request left on its Poisson schedule.
    offsets = arrival_offsets(cfg)
    starts = np.array([r.start_s for r in out.results])
    assert (starts >= offsets).all() and (starts - offsets).max() < LATE_S
    assert m.duration_s >= offsets[-1] + want["e2el"].min()

    # The aggregates, recomputed here from the per-request records.
    ttft_ms = np.array([r.ttft for r in ok]) * 1000
    itl_ms = np.concatenate([r.itl for r in ok]) * 1000
    tpot_ms = np.array([(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok]) * 1000
    assert lat["ttft"].mean == pytest.approx(ttft_ms.mean())
    assert lat["ttft"].median == pytest.approx(np.median(ttft_ms))
    assert lat["ttft"].std == pytest.approx(ttft_ms.std())
    assert lat["itl"].percentiles["p99"] == pytest.approx(np.percentile(itl_ms, 99))
    assert lat["tpot"].percentiles["p90"] == pytest.approx(np.percentile(tpot_ms, 90))
    for r in ok:  # the gaps of one request add up to its decode time
        assert sum(r.itl) == pytest.approx(r.latency - r.ttft)
    assert m.request_throughput == pytest.approx(16 / m.duration_s)
    assert m.output_throughput == pytest.approx(m.total_output_tokens / m.duration_s)
    assert m.total_token_throughput == pytest.approx(
        (m.total_input_tokens + m.total_output_tokens) / m.duration_s)


def test_chat_endpoint_without_tokenizer_or_usage(scripted_server):
    """Word prompts, output tokens counted from chunks, the role-only chunk not a token."""
    srv = scripted_server(Script(ttft_s=[0.04], tpot_s=[0.005], usage=False, tokenize=False))
    cfg = BenchConfig(base_url=srv.url, num_prompts=6, request_rate=50.0, input_len=(5, 9),
                      output_len=(4, 7), endpoint="chat", api_key="sesame", progress=False)
    out = _run(cfg)
    assert out.prompt_source == "words" and out.metrics.completed == 6
    assert all("messages" in s.body for s in srv.seen)
    assert all(s.authorization == "Bearer sesame" for s in srv.seen)
    assert sorted(r.prompt_tokens for r in out.results) == sorted(s.prompt_tokens
                                                                   for s in srv.seen)
    assert sorted(r.output_tokens for r in out.results) == sorted(s.max_tokens for s in srv.seen)
    _assert_sorted_close([r.ttft for r in out.results], _schedule(srv.seen)["ttft"], LATE_S)


def test_max_concurrency_caps_requests_in_flight(scripted_server):
    srv = scripted_server(Script(ttft_s=[0.01], tpot_s=[0.002]))
    cfg = BenchConfig(base_url=srv.url, num_prompts=8, max_concurrency=2, input_len=(4, 4),
                      output_len=(3, 3), progress=False)
    out = _run(cfg)
    assert out.metrics.completed == 8
    assert srv.max_in_flight == 2


def test_failed_requests_are_counted_by_kind_and_the_run_goes_on(scripted_server):
    failures = {1: "500", 2: "400", 4: "500", 5: "stream", 6: "drop"}
    srv = scripted_server(Script(ttft_s=[0.01], tpot_s=[0.003], failures=failures))
    cfg = BenchConfig(base_url=srv.url, num_prompts=10, input_len=(4, 6), output_len=(4, 5),
                      progress=False)
    out = _run(cfg)
    m = out.metrics
    assert (m.completed, m.failed) == (5, 5)
    assert m.errors == {"HTTP 400": 1, "HTTP 500": 2, "RemoteProtocolError": 1,
                        "error in stream": 1}
    by_status = {r.status: r.error for r in out.results if r.status in (400, 500)}
    assert "scripted failure of request" in by_status[500]
    assert "Failed requests" in out.table and "HTTP 500 x2" in out.table
    assert m.total_output_tokens == sum(s.max_tokens for s in srv.seen if s.failure is None)


def test_unreachable_server_fails_requests_not_the_run():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = _run(BenchConfig(base_url=url, model="m", num_prompts=3, input_len=(2, 2),
                           output_len=(2, 2), progress=False))
    assert (out.metrics.completed, out.metrics.errors) == (0, {"ConnectError": 3})
    assert out.prompt_source == "words"
    with pytest.raises(ConnectionError, match="cannot reach"):
        _run(BenchConfig(base_url=url, num_prompts=1, progress=False))


def test_cancel_fraction_closes_streams_part_way(scripted_server):
    # 2 tokens, 1/4 s apart: the client closes a stream before the server's next token
    # (it stops after 0 or 1 tokens).
    srv = scripted_server(Script(ttft_s=[0.01], tpot_s=[0.25]))
    cfg = BenchConfig(base_url=srv.url, num_prompts=8, input_len=(4, 4), output_len=(2, 2),
                      cancel_fraction=0.5, progress=False)
    out = _run(cfg)
    m = out.metrics
    assert (m.completed, m.failed, m.cancelled) == (4, 0, 4)
    assert m.total_output_tokens == 8  # the metrics cover finished requests only
    for r in out.results:
        if r.cancelled:
            assert len(r.itl) + (r.ttft > 0) < 2  # closed before its last token
    srv.wait_until_streams_closed()
    assert len(srv.seen) - len(srv.finished) == 4  # the server saw 4 streams go away


def test_goodput_counts_requests_meeting_every_slo():
    def result(ttft: float, latency: float, tokens: int, success: bool = True) -> RequestResult:
        return RequestResult(index=0, prompt_tokens=1, success=success, ttft=ttft,
                             latency=latency, output_tokens=tokens)

    results = [result(0.1, 1.0, 10),  # tpot 100 ms
               result(0.3, 1.2, 10),  # ttft too slow
               result(0.1, 2.0, 11),  # tpot 190 ms: too slow
               result(0.2, 0.2, 1),  # one token: tpot counts as 0
               result(0.1, 2.5, 25),  # e2el too slow
               result(0.01, 0.1, 10, success=False)]  # failed requests never count
    slos = {"ttft": 200.0, "tpot": 150.0, "e2el": 2000.0}
    m = compute_metrics(results, duration_s=2.0, slos_ms=slos, percentiles=(99.0,))
    assert (m.good_requests, m.request_goodput) == (2, 1.0)
    assert compute_metrics(results, 2.0, {"ttft": 200.0}, (99.0,)).good_requests == 4
    assert compute_metrics(results, 2.0, {}, (99.0,)).request_goodput is None
    assert m.latencies_ms["tpot"].mean == pytest.approx(np.mean([100, 100, 190, 100]))


def test_cli_prints_the_table_and_writes_json_and_png(scripted_server, tmp_path, capsys):
    srv = scripted_server(Script(ttft_s=[0.01, 0.02], tpot_s=[0.002]))
    args = ["bench", "serve", "--base-url", srv.url, "--num-prompts", "6", "--input-len",
            "4:8", "--output-len", "3:5", "--goodput", "ttft:1000", "e2el:5000",
            "--percentiles", "50,99", "--result-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for line in ("Successful requests:", "Request goodput (req/s):", "P99 TTFT (ms):",
                 "Median ITL (ms):", "Mean E2EL (ms):", "Output token throughput (tok/s):"):
        assert line in printed
    [json_path] = tmp_path.glob("*.json")
    [png_path] = tmp_path.glob("*.png")
    doc = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert doc["metrics"]["completed"] == 6 and len(doc["requests"]) == 6
    assert [r["max_tokens"] for r in doc["requests"]] == [r["output_tokens"]
                                                         for r in doc["requests"]]
    assert sorted(r["input_len"] for r in doc["requests"]) == sorted(s.prompt_tokens
                                                                     for s in srv.seen)
    assert doc["config"]["request_rate"] == "inf" and doc["config"]["goodput_ms"]["ttft"] == 1000
    ttfts = [r["ttft"] for r in doc["requests"]]
    assert doc["metrics"]["latencies_ms"]["ttft"]["mean"] == pytest.approx(np.mean(ttfts) * 1000)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = pytest.importorskip("matplotlib.image").imread(png_path)
    assert image.shape[0] > 300 and image.shape[1] > 500


@pytest.mark.parametrize("bad, named", [
    (["--input-len", "5:3"], "input_len"),
    (["--output-len", "0"], "output_len"),
    (["--goodput", "latency:5"], "goodput"),
    (["--goodput", "ttft:-1"], "goodput"),
    (["--request-rate", "0"], "request_rate"),
    (["--burstiness", "nan"], "burstiness"),
    (["--cancel-fraction", "1.5"], "cancel_fraction"),
    (["--max-concurrency", "0"], "max_concurrency"),
    (["--percentiles", "50,120"], "percentiles"),
])
def test_cli_rejects_bad_values_by_name(bad, named, capsys):
    assert main(["bench", "serve", "--base-url", "http://127.0.0.1:1"] + bad) == 2
    err = capsys.readouterr().err
    assert named in err and "must be" in err and "Traceback" not in err


def test_cli_reports_bad_syntax_and_unreachable_servers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "serve", "--base-url", "http://127.0.0.1:1", "--input-len", "a:b"])
    assert exit_info.value.code == 2 and "'a:b' is not N or MIN:MAX" in capsys.readouterr().err
    assert main(["bench", "serve", "--base-url", "localhost:8000"]) == 2
    assert "base_url='localhost:8000'" in capsys.readouterr().err
    assert main(["bench", "serve", "--base-url", "http://127.0.0.1:1", "--no-progress"]) == 2
    assert "cannot reach http://127.0.0.1:1" in capsys.readouterr().err


def test_against_the_llmsys_server(tmp_path):
    """The real server: prompts of exactly the sampled length (checked with the reference
    tokenizer), usage-based counts, `ignore_eos` honoured, both endpoints."""
    transformers = pytest.importorskip("transformers")
    from llmsys.serve import BackgroundServer, ServerConfig
    from llmsys.testing import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint("llama", tmp_path / "llama")
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    config = ServerConfig(model=str(checkpoint), port=0, served_model_name="tiny",
                          graceful_shutdown_s=5)
    with BackgroundServer(config) as server:
        for endpoint in ("completions", "chat"):
            out = _run(BenchConfig(base_url=server.base_url, num_prompts=6, input_len=(5, 40),
                                   output_len=(3, 9), endpoint=endpoint, progress=False))
            assert out.model == "tiny" and out.prompt_source == "tokens"
            assert out.metrics.completed == 6, out.metrics.errors
            for req, res in zip(out.requests, out.results):
                assert len(hf(req.prompt, add_special_tokens=False).input_ids) == req.prompt_len
                assert res.output_tokens == req.output_len
                if endpoint == "completions":
                    assert res.prompt_tokens == len(hf(req.prompt).input_ids)
                else:
                    chat = [{"role": "user", "content": req.prompt}]
                    assert res.prompt_tokens == len(hf.apply_chat_template(
                        chat, add_generation_prompt=True, tokenize=True, return_dict=False))
