"""Soak test of `llmsys serve` under saturating load, and served against offline throughput.

    python benchmarks/serve_soak.py [--repeats 3]   # ~110M Llama, float32: ~8 min on 2 cores
                                                    # (+3.5 min per extra repeat)
    python benchmarks/serve_soak.py --small         # a tiny checkpoint: checks the script (~15 s)
    python benchmarks/serve_soak.py --model DIR [--num-prompts N] [--ratio-prompts M]

What it does:
1. Makes the ~110M-parameter Llama-shaped random checkpoint the other benchmarks use
   (`LLAMA_110M`; `--small`: hidden 256, 4 layers) in a temporary directory, or takes
   `--model DIR`. The tiny tokenizer has 512 tokens, the 110M model 16,384 ids: the script
   gives the tokenizer one plain vocabulary entry per extra id (" t00512", ...; never
   produced by encoding), else ~97% of the generated tokens would decode to no text, the
   streams would carry almost nothing, and TTFT, ITL and cancellations would be meaningless.
2. Starts `llmsys serve` on it as a subprocess (`--port 0`: a free loopback port, read from
   its first line) and waits for `GET /health` to answer 200.
3. Soak run: the load generator (`llmsys.bench.serve`) streams `--num-prompts` completions
   with random input and output lengths (`ignore_eos`, greedy), `--max-concurrency` in
   flight at once (rate inf: a new request as soon as one ends), and closes a random
   `--cancel-fraction` of the streams part-way.
4. Checks: no 5xx answer or error event in a stream; no hung request (each one completed,
   was cancelled, or failed with a status within the per-request timeout); no other
   failure; every completed request got exactly the tokens it asked for; and afterwards
   `/metrics` returns to idle (KV-cache usage 0, no running or waiting sequences).
5. Throughput runs: `--ratio-prompts` new prompts (another seed each time, so the prefix
   cache cannot help), no cancellations, all sent at once; right after each, the same
   prompts with the same output lengths run offline through `LLM.generate` in this process
   (the engine settings of the server, which sits idle meanwhile). `--repeats` such pairs
   alternate, as the machine is noisy. The ratio is served output tokens/s (output tokens
   ÷ load-generator duration: first request sent → last token received, the HTTP client
   running on the same cores) ÷ offline output tokens/s (output tokens ÷ wall time of
   `LLM.generate`, after a warm-up); the median over the pairs is reported. The CPU time
   of the load generator, the server's event loop and its engine threads is printed too.
6. Writes benchmarks/results/serve_soak.json (settings, checks, metrics of all runs,
   offline numbers, the ratios, the load generator's tables) and serve_soak.png (the soak
   run's latency histograms); `--save-requests` adds serve_soak_requests.json (every soak
   request's timings, ~0.5 MB). Prints a markdown section for docs/benchmarks.md.
   `--small` writes serve_soak_small.* instead.
7. The server is shut down with SIGINT (then SIGTERM, then SIGKILL if it does not exit)
   whatever happens, and must exit 0. The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from llmsys.bench.serve import BenchConfig, BenchResult, run_benchmark
from llmsys.bench.serve_metrics import BenchMetrics, write_histograms, write_json
from llmsys.testing import LLAMA_110M, make_tiny_checkpoint

SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
             intermediate_size=768, max_position_embeddings=2048)
RESULTS = Path(__file__).resolve().parent / "results"
T0 = time.perf_counter()


def say(message: str) -> None:
    elapsed = time.perf_counter() - T0
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", flush=True)


def cover_vocab(model: Path, vocab_size: int) -> None:
    """Give the byte-level BPE tokenizer of `model` a vocabulary entry for every id below
    `vocab_size` (plain entries without merges: they decode to " tNNNNN", encoding never
    produces them), so that every generated token streams text."""
    path = model / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    vocab = doc["model"]["vocab"]
    have = len(vocab) + len(doc["added_tokens"])
    vocab.update({f"\u0120t{i:05d}": i for i in range(have, vocab_size)})  # U+0120 = space
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------------------- the server


class ServerProcess:
    """`llmsys serve` in a subprocess on a free loopback port, stopped when the block ends.
    Its output is echoed with a `[server]` prefix."""

    def __init__(self, model: Path, dtype: str, max_num_seqs: int, max_concurrent: int,
                 ready_timeout_s: float = 300.0):
        self.cmd = [sys.executable, "-m", "llmsys.cli", "serve", "--model", str(model),
                    "--served-model-name", "soak", "--host", "127.0.0.1", "--port", "0",
                    "--dtype", dtype, "--max-num-seqs", str(max_num_seqs),
                    "--max-concurrent-requests", str(max_concurrent)]
        self.ready_timeout_s = ready_timeout_s
        self.url: str | None = None
        self.returncode: int | None = None
        self._url_seen = threading.Event()

    def __enter__(self) -> ServerProcess:
        say("starting: " + " ".join(self.cmd[1:]))
        # its own session: a Ctrl-C here reaches only this script, which then stops it
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)
        threading.Thread(target=self._echo, daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _echo(self) -> None:
        for line in self.proc.stdout:
            print(f"  [server] {line.rstrip()}", flush=True)
            found = re.search(r"listening on (http://\S+)", line)
            if found and self.url is None:
                self.url = found.group(1)
                self._url_seen.set()
        self._url_seen.set()  # the process ended

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        self._url_seen.wait(self.ready_timeout_s)
        if self.url is None:
            raise RuntimeError(f"llmsys serve did not report its address (exit status "
                               f"{self.proc.poll()})")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmsys serve exited with status {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    say(f"server ready at {self.url}")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url}/health did not answer 200 in {self.ready_timeout_s} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGINT (graceful: in-flight requests get 30 s), then SIGTERM, then SIGKILL."""
        if self.returncode is not None or self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            return self.returncode
        for sig, wait_s in ((signal.SIGINT, 45), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            say(f"stopping the server ({sig.name})")
            self.proc.send_signal(sig)
            try:
                self.returncode = self.proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        say(f"server exited with status {self.returncode}")
        return self.returncode


def scrape_metrics(url: str) -> dict[str, float]:
    """`/metrics` samples without histograms: name (without `llmsys:`) -> value; the finished
    counter as `request_success_total[reason]`."""
    text = httpx.get(f"{url}/metrics", timeout=10).raise_for_status().text
    samples = {}
    for line in text.splitlines():
        found = re.match(r"llmsys:(\w+)\{([^}]*)\} (\S+)$", line)
        if not found or found.group(1).endswith(("_bucket", "_sum", "_count")):
            continue
        name, labels, value = found.groups()
        reason = re.search(r'finished_reason="(\w+)"', labels)
        samples[f"{name}[{reason.group(1)}]" if reason else name] = float(value)
    return samples


def wait_idle(url: str, timeout_s: float = 10.0) -> tuple[bool, dict[str, float]]:
    """Poll /metrics until no sequence runs or waits and no KV block is used."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape_metrics(url)
        idle = (m["kv_cache_usage_perc"] == 0 and m["num_requests_running"] == 0
                and m["num_requests_waiting"] == 0)
        if idle or time.monotonic() > deadline:
            return idle, m
        time.sleep(0.1)


# ---------------------------------------------------------------------------- the runs


@dataclass
class CpuUse:
    """CPU seconds used during a served run: by the load generator (this process, with
    preparing the prompts), by the server's main thread (its event loop: HTTP, SSE) and by
    its other threads (the engine loop and torch's workers; tokenization). None where /proc
    cannot be read."""

    client_s: float
    server_loop_s: float | None = None
    server_other_s: float | None = None

    def describe(self) -> str:
        text = f"load generator {self.client_s:.1f} CPU-s"
        if self.server_loop_s is None:
            return text
        return (f"{text}, server event loop {self.server_loop_s:.1f} CPU-s, "
                f"server engine and other threads {self.server_other_s:.1f} CPU-s")


def process_cpu_s(pid: int) -> tuple[float, float] | None:
    """(main thread, whole process) CPU seconds of `pid` from /proc (Linux), else None."""
    def read(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()  # after "pid (name)"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    try:
        return read(f"/proc/{pid}/task/{pid}/stat"), read(f"/proc/{pid}/stat")
    except OSError:
        return None


def served_run(cfg: BenchConfig, title: str, server_pid: int) -> tuple[BenchResult, CpuUse]:
    """The load generator's run, and the CPU time the client and the server used."""
    say(f"{title}: {cfg.num_prompts} requests, input {cfg.input_len}, output "
        f"{cfg.output_len}, {cfg.max_concurrency or 'all'} in flight, "
        f"{cfg.cancel_fraction:.0%} cancelled")
    client, server = time.process_time(), process_cpu_s(server_pid)
    out = asyncio.run(run_benchmark(cfg))
    cpu = CpuUse(time.process_time() - client)
    server_after = process_cpu_s(server_pid)
    if server is not None and server_after is not None:
        cpu.server_loop_s = server_after[0] - server[0]
        cpu.server_other_s = server_after[1] - server[1] - cpu.server_loop_s
    m = out.metrics
    say(f"{title}: {m.completed} completed, {m.cancelled} cancelled, {m.failed} failed in "
        f"{m.duration_s:.1f} s; {m.output_throughput:.1f} output tok/s; {cpu.describe()}")
    print(out.table, flush=True)
    return out, cpu


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def soak_checks(out: BenchResult, idle: bool, after: dict[str, float]) -> list[Check]:
    results = out.results
    server_errors = [r for r in results if (r.status or 0) >= 500
                     or r.error_kind == "error in stream"]
    hung = [r for r in results if "Timeout" in r.error_kind]
    failed = [r for r in results if not r.success and not r.cancelled]
    asked = {req.index: req.output_len for req in out.requests}
    short = [r for r in results if r.success and r.output_tokens != asked[r.index]]
    ended = sum(r.success or r.cancelled or r.status is not None or bool(r.error_kind)
                for r in results)
    return [
        Check("no 5xx or in-stream error", not server_errors,
              f"{len(server_errors)} of {len(results)}"),
        Check("no hung request", not hung and ended == len(results),
              f"{len(hung)} timed out; {ended} of {len(results)} ended"),
        Check("no failed request", not failed,
              ", ".join(f"{k} x{v}" for k, v in out.metrics.errors.items()) or "0 failed"),
        Check("completions have their max_tokens", not short,
              f"{len(short)} of {out.metrics.completed} differ"),
        Check("server idle afterwards", idle,
              f"kv_cache_usage_perc={after['kv_cache_usage_perc']:g}, running="
              f"{after['num_requests_running']:g}, waiting={after['num_requests_waiting']:g}"),
    ]


@dataclass
class OfflineResult:
    seconds: float
    prompt_tokens: int
    output_tokens: int
    cpu_s: float  # this process's CPU time during `LLM.generate`

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.seconds


def offline_engine(model: Path, dtype: str, max_num_seqs: int):
    """An `LLM` with the server's engine settings, warmed up."""
    from llmsys import LLM, SamplingParams

    llm = LLM(model, dtype=dtype, max_num_seqs=max_num_seqs)
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2))
    return llm


def offline_run(llm, out: BenchResult) -> OfflineResult:
    """The served run's prompts and output lengths through `LLM.generate`, all at once."""
    from llmsys import SamplingParams

    prompts = [req.prompt for req in out.requests]
    params = [SamplingParams(temperature=0.0, max_tokens=req.output_len, ignore_eos=True)
              for req in out.requests]
    say(f"offline: {len(prompts)} requests through LLM.generate")
    start, cpu = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params, use_tqdm=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = OfflineResult(seconds, sum(len(o.prompt_token_ids) for o in outs),
                           sum(len(o.token_ids) for o in outs), cpu)
    say(f"offline: {result.output_tokens} output tokens in {seconds:.1f} s; "
        f"{result.output_throughput:.1f} output tok/s; {cpu:.1f} CPU-s")
    return result


@dataclass
class Pair:
    """One throughput run served and the same workload offline, back to back."""

    served: BenchResult
    cpu: CpuUse
    offline: OfflineResult

    @property
    def ratio(self) -> float:
        return self.served.metrics.output_throughput / self.offline.output_throughput

    def same_workload(self, index: int) -> Check:
        m, o = self.served.metrics, self.offline
        return Check(f"same workload served and offline (run {index + 1})",
                     o.output_tokens == m.total_output_tokens
                     and o.prompt_tokens == m.total_input_tokens,
                     f"output tokens {m.total_output_tokens} / {o.output_tokens}, "
                     f"prompt tokens {m.total_input_tokens} / {o.prompt_tokens}")


# ---------------------------------------------------------------------------- the report


@dataclass
class Report:
    args: argparse.Namespace
    soak: BenchResult
    pairs: list[Pair]
    checks: list[Check]
    server_metrics: dict[str, float]  # /metrics after all runs
    server_status: int | None

    @property
    def median(self) -> Pair:
        """The pair with the median ratio (the lower middle one for an even count)."""
        return sorted(self.pairs, key=lambda p: p.ratio)[(len(self.pairs) - 1) // 2]


def latency_row(m: BenchMetrics, name: str) -> str:
    d = m.latencies_ms[name]
    return "n/a" if d is None else f"{d.mean:.0f} / {d.median:.0f} / {d.percentiles['p99']:.0f}"


def markdown(rep: Report) -> str:
    args, mid = rep.args, rep.median
    s, r = rep.soak.metrics, mid.served.metrics
    shape = "hidden 256, 4 layers" if args.small else "~110M-parameter Llama-shaped"
    flags = (" --small" if args.small else "") + (
        f" --repeats {args.repeats}" if args.repeats > 1 else "")
    lines = [
        "## Serving: soak test and served against offline throughput "
        "(`benchmarks/serve_soak.py`)", "", "```", f"python benchmarks/serve_soak.py{flags}",
        "```", "",
        f"`llmsys serve` on a {shape} random checkpoint ({args.dtype}, {args.max_num_seqs} "
        f"sequences per batch), loaded by `llmsys bench serve` from the same machine "
        f"(streamed `/v1/completions`, greedy, `ignore_eos`; input "
        f"{args.input_len[0]}–{args.input_len[1]} tokens, output "
        f"{args.output_len[0]}–{args.output_len[1]}). Soak run: {args.num_prompts} requests, "
        f"{args.max_concurrency} in flight, {args.cancel_fraction:.0%} of the streams closed "
        f"part-way. Throughput run: {args.ratio_prompts} other prompts, all sent at once, none "
        "cancelled; right after it the same prompts and output lengths offline through "
        "`LLM.generate` (same engine settings, the server idle)"
        + (f"; {args.repeats} such pairs, the median shown." if args.repeats > 1 else "."), "",
        "| | soak run | throughput run |", "|---|---:|---:|",
        f"| requests completed / cancelled / failed | {s.completed} / {s.cancelled} / "
        f"{s.failed} | {r.completed} / {r.cancelled} / {r.failed} |",
        f"| duration (s) | {s.duration_s:.1f} | {r.duration_s:.1f} |",
        f"| request throughput (req/s) | {s.request_throughput:.2f} | "
        f"{r.request_throughput:.2f} |",
        f"| output tokens/s | {s.output_throughput:.1f} | {r.output_throughput:.1f} |",
        f"| input + output tokens/s | {s.total_token_throughput:.1f} | "
        f"{r.total_token_throughput:.1f} |",
    ]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        lines.append(f"| {label} mean / median / p99 (ms) | {latency_row(s, name)} | "
                     f"{latency_row(r, name)} |")
    lines += ["", "| same workload | served output tok/s | offline output tok/s | "
              "served ÷ offline |", "|---|---:|---:|---:|"]
    lines += [f"| throughput run {i + 1} | {p.served.metrics.output_throughput:.1f} | "
              f"{p.offline.output_throughput:.1f} | {p.ratio:.2f} |"
              for i, p in enumerate(rep.pairs)]
    lines += [
        "", "Served: output tokens ÷ (first request sent → last token received); offline: "
        "output tokens ÷ wall time of `LLM.generate`. "
        f"**Served ÷ offline: {mid.ratio:.2f}** (target ≥ 0.85).", "",
        f"CPU time during the throughput run ({r.duration_s:.1f} s on {os.cpu_count()} "
        f"cores): {mid.cpu.describe()}; offline ({mid.offline.seconds:.1f} s): "
        f"{mid.offline.cpu_s:.1f} CPU-s.", "",
        "Checks: " + "; ".join(f"{c.name}: {'ok' if c.ok else 'FAILED'} ({c.detail})"
                               for c in rep.checks) + ".",
    ]
    return "\n".join(lines)


def write_results(rep: Report) -> list[Path]:
    """The summary JSON and the soak run's latency histograms (+ its requests, if asked)."""
    args, soak = rep.args, rep.soak
    stem = "serve_soak_small" if args.small else "serve_soak"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                 if k != "out_dir"},
        "checks": [asdict(c) for c in rep.checks],
        "server_exit_status": rep.server_status,
        "server_metrics_after": rep.server_metrics,
        "soak": asdict(soak.metrics) | {"table": soak.table},
        "throughput_runs": [
            {"served": asdict(p.served.metrics) | {"table": p.served.table},
             "cpu_s": asdict(p.cpu),
             "offline": asdict(p.offline) | {"output_throughput": p.offline.output_throughput},
             "served_over_offline": p.ratio} for p in rep.pairs],
        "served_over_offline_median": rep.median.ratio,
    }
    paths = [args.out_dir / f"{stem}{suffix}" for suffix in (".json", ".png")]
    paths[0].write_text(json.dumps(summary, indent=1, default=str) + "\n")
    write_histograms(paths[1], soak.results, {},
                     f"llmsys serve soak · {soak.config.num_prompts} requests · "
                     f"{soak.config.max_concurrency} in flight · "
                     f"{soak.config.cancel_fraction:.0%} cancelled")
    if args.save_requests:
        paths.append(args.out_dir / f"{stem}_requests.json")
        requested = [{"input_len": q.prompt_len, "max_tokens": q.output_len,
                      "cancel_after": q.cancel_after} for q in soak.requests]
        write_json(paths[-1], {"model": soak.model, "prompt_source": soak.prompt_source},
                   soak.metrics, soak.results, requested)
    return paths


# ---------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    def length_range(text: str) -> tuple[int, int]:
        lo, _, hi = text.partition(":")
        return int(lo), int(hi or lo)

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="default: a random checkpoint")
    p.add_argument("--small", action="store_true", help="tiny checkpoint and workload")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--num-prompts", type=int, default=None, help="soak run (default 128; 48)")
    p.add_argument("--ratio-prompts", type=int, default=None,
                   help="throughput run (default 64; 32)")
    p.add_argument("--input-len", type=length_range, default=None,
                   metavar="MIN:MAX", help="default 32:512 (--small 16:128)")
    p.add_argument("--output-len", type=length_range, default=None,
                   metavar="MIN:MAX", help="default 32:256 (--small 16:64)")
    p.add_argument("--max-concurrency", type=int, default=64, help="soak run in flight")
    p.add_argument("--max-num-seqs", type=int, default=64, help="engine batch, both runs")
    p.add_argument("--cancel-fraction", type=float, default=0.1)
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="a request that waits this long for a byte counts as hung (s)")
    p.add_argument("--repeats", type=int, default=1,
                   help="served / offline throughput pairs (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--save-requests", action="store_true",
                   help="also write every soak request's timings")
    args = p.parse_args()
    small = args.small
    args.num_prompts = args.num_prompts or (48 if small else 128)
    args.ratio_prompts = args.ratio_prompts or (32 if small else 64)
    args.input_len = args.input_len or ((16, 128) if small else (32, 512))
    args.output_len = args.output_len or ((16, 64) if small else (32, 256))
    return args


def bench_config(args: argparse.Namespace, url: str, num_prompts: int, seed: int,
                 cancel_fraction: float, max_concurrency: int | None) -> BenchConfig:
    return BenchConfig(base_url=url, num_prompts=num_prompts, request_rate=math.inf,
                       max_concurrency=max_concurrency, input_len=args.input_len,
                       output_len=args.output_len, seed=seed, cancel_fraction=cancel_fraction,
                       timeout_s=args.request_timeout, percentiles=(99.0,))


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # 1. the checkpoint
        model = args.model
        if model is None:
            say("writing a random checkpoint" + (" (small)" if args.small else " (~110M)"))
            shape = SMALL if args.small else LLAMA_110M
            model = make_tiny_checkpoint("llama", Path(tmp) / "llama", **shape)
            cover_vocab(model, shape.get("vocab_size", 0))
        # 2. the server
        max_in_flight = max(256, args.ratio_prompts, args.max_concurrency)
        with ServerProcess(model, args.dtype, args.max_num_seqs, max_in_flight) as server:
            # 3. the soak run
            soak, _ = served_run(bench_config(args, server.url, args.num_prompts, args.seed,
                                              args.cancel_fraction, args.max_concurrency),
                                 "soak run", server.pid)
            # 4. the checks (the last one after polling /metrics)
            idle, after = wait_idle(server.url)
            checks = soak_checks(soak, idle, after)
            # 5. served and offline throughput, alternating
            llm = offline_engine(model, args.dtype, args.max_num_seqs)
            pairs = []
            for i in range(args.repeats):
                cfg = bench_config(args, server.url, args.ratio_prompts, args.seed + 1 + i,
                                   0.0, None)
                served, cpu = served_run(cfg, f"throughput run {i + 1}/{args.repeats}",
                                         server.pid)
                pairs.append(Pair(served, cpu, offline_run(llm, served)))
                say(f"served ÷ offline: {pairs[-1].ratio:.2f}")
            server_metrics = scrape_metrics(server.url)
            server.stop()
    checks.append(Check("server exits 0 on SIGINT", server.returncode == 0,
                        f"status {server.returncode}"))
    checks += [p.same_workload(i) for i, p in enumerate(pairs)]
    rep = Report(args, soak, pairs, checks, server_metrics, server.returncode)
    # 6. the results
    for c in checks:
        say(f"check {'ok    ' if c.ok else 'FAILED'} {c.name}: {c.detail}")
    say(f"served ÷ offline output tok/s: {', '.join(f'{p.ratio:.2f}' for p in pairs)}; "
        f"median {rep.median.ratio:.2f} (target >= 0.85)")
    for path in write_results(rep):
        say(f"wrote {path}")
    print("\n" + markdown(rep), flush=True)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
