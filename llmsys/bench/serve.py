"""`llmsys bench serve`: a load generator for any OpenAI-compatible server.

    llmsys bench serve --base-url http://127.0.0.1:8000 --num-prompts 200 --request-rate 8 \\
        --input-len 128:512 --output-len 64:256 --goodput ttft:500 tpot:50 --result-dir runs/

Every request streams (`stream: true`, `stream_options.include_usage`, `ignore_eos: true`,
`max_tokens` = its sampled output length, temperature 0) to `/v1/completions` or, with
`--endpoint chat`, to `/v1/chat/completions` as one user message. Requests arrive as a
Poisson process (burstiness 1) or with gamma-distributed gaps (shape = burstiness, mean
1 / rate; below 1 is burstier, above 1 more regular); rate `inf` sends them all at once.
`--max-concurrency` caps the requests in flight (an arrived request waits for a slot; its
clock starts when it is sent). `--cancel-fraction` closes that fraction of the streams
part-way (after a random number of text chunks, possibly none, but fewer than its output
length), as a soak test of aborts; cancelled requests are counted but left out of the
metrics (a stream that ends first, as when the server packs several tokens in a chunk,
simply completes). A failed request (an HTTP error, a broken stream, a timeout) is counted
by its kind and never stops the run.

Prompts are random token ids made text by the server's /detokenize, or random words when it
has none (see `serve_prompts.py`). Output tokens are counted from the usage chunk when the
server sends one, else one per text chunk; input tokens from the usage chunk, else the
sampled input length.
The metric definitions are in `serve_metrics.py` (they are vLLM's). The run prints a table
and, with `--result-dir`, writes a JSON result and a PNG of latency histograms there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmsys.bench.serve_metrics import (
    SLO_NAMES,
    BenchMetrics,
    RequestResult,
    compute_metrics,
    format_table,
    write_histograms,
    write_json,
)
from llmsys.bench.serve_prompts import BenchRequest, make_requests

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass
class BenchConfig:
    """One benchmark run. Lengths are inclusive (min, max) ranges; SLOs in milliseconds."""

    base_url: str
    num_prompts: int = 100
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    input_len: tuple[int, int] = (128, 128)
    output_len: tuple[int, int] = (128, 128)
    goodput_ms: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    api_key: str | None = None
    endpoint: str = "completions"
    seed: int = 0
    cancel_fraction: float = 0.0
    percentiles: tuple[float, ...] = (99.0,)
    result_dir: Path | None = None
    timeout_s: float = 600.0
    progress: bool = True

    def __post_init__(self) -> None:
        self.input_len, self.output_len = tuple(self.input_len), tuple(self.output_len)
        self.percentiles = tuple(self.percentiles)
        checks = [
            (self.base_url.startswith(("http://", "https://")), "base_url", self.base_url,
             "an http:// or https:// URL"),
            (_is_int(self.num_prompts) and self.num_prompts >= 1, "num_prompts",
             self.num_prompts, "an integer >= 1"),
            (self.request_rate > 0, "request_rate", self.request_rate, "> 0, or inf"),
            (0 < self.burstiness < math.inf, "burstiness", self.burstiness, "a finite number > 0"),
            (self.max_concurrency is None
             or (_is_int(self.max_concurrency) and self.max_concurrency >= 1),
             "max_concurrency", self.max_concurrency, "an integer >= 1 or None"),
            (_is_range(self.input_len), "input_len", self.input_len, "MIN:MAX, 1 <= MIN <= MAX"),
            (_is_range(self.output_len), "output_len", self.output_len,
             "MIN:MAX, 1 <= MIN <= MAX"),
            (set(self.goodput_ms) <= set(SLO_NAMES), "goodput", self.goodput_ms,
             f"SLOs named {' / '.join(SLO_NAMES)}"),
            (all(v > 0 for v in self.goodput_ms.values()), "goodput", self.goodput_ms,
             "SLO values > 0 (milliseconds)"),
            (self.endpoint in ENDPOINTS, "endpoint", self.endpoint, " or ".join(ENDPOINTS)),
            (0.0 <= self.cancel_fraction <= 1.0, "cancel_fraction", self.cancel_fraction,
             "in [0, 1]"),
            (all(0 <= p <= 100 for p in self.percentiles), "percentiles", self.percentiles,
             "numbers in [0, 100]"),
            (self.timeout_s > 0, "timeout_s", self.timeout_s, "> 0 seconds"),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")

    @property
    def root_url(self) -> str:
        """The server root: `base_url` without a trailing `/v1`."""
        url = self.base_url.rstrip("/")
        return url.removesuffix("/v1")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_range(r: tuple) -> bool:
    return len(r) == 2 and all(_is_int(v) for v in r) and 1 <= r[0] <= r[1]


@dataclass
class BenchResult:
    config: BenchConfig
    model: str
    prompt_source: str  # "tokens" (via /detokenize) or "words"
    metrics: BenchMetrics
    requests: list[BenchRequest]
    results: list[RequestResult]  # one per request, in the same order
    table: str
    json_path: Path | None = None
    png_path: Path | None = None


def arrival_times(n: int, rate: float, burstiness: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Send offsets (s) of `n` requests, the first at 0. The gaps are gamma-distributed with
    shape `burstiness` and mean 1 / `rate` (exponential, i.e. Poisson arrivals, at burstiness
    1; coefficient of variation 1 / sqrt(burstiness)); rate inf sends everything at 0."""
    if math.isinf(rate):
        return np.zeros(n)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def arrival_offsets(cfg: BenchConfig) -> np.ndarray:
    """The run's send offsets: `arrival_times` drawn from a stream seeded by `cfg.seed`."""
    rng = np.random.default_rng([cfg.seed, 1])  # apart from the prompts: [seed, 0, i]
    return arrival_times(cfg.num_prompts, cfg.request_rate, cfg.burstiness, rng)


# ---------------------------------------------------------------------------- requests


async def fetch_model(client) -> str:
    """The first model the server lists at /v1/models."""
    import httpx

    try:
        r = await client.get("/v1/models")
    except httpx.HTTPError as e:
        raise ConnectionError(f"cannot reach {client.base_url}: {type(e).__name__} {e}") from e
    try:
        return r.raise_for_status().json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{r.url} answered {r.status_code} without a model list; "
                         f"pass --model NAME ({type(e).__name__}: {e})") from e


def request_body(cfg: BenchConfig, model: str, req: BenchRequest) -> dict:
    body = {"model": model, "max_tokens": req.output_len, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    return body


def carries_text(event: dict) -> bool:
    """Whether a streamed chunk holds generated output (text, reasoning or a tool call);
    the chat stream's role-only first chunk and the usage chunk do not."""
    choices = event.get("choices") or []
    if not choices:
        return False
    choice = choices[0]
    if "text" in choice:
        return bool(choice["text"])
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content")
                or delta.get("reasoning") or delta.get("tool_calls"))


def _error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else its first 200 characters."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not err:
        return body.decode(errors="replace")[:200]
    return str(err.get("message", err) if isinstance(err, dict) else err)[:200]


async def send_request(client, path: str, body: dict, req: BenchRequest,
                       t0: float) -> RequestResult:
    """Stream one request and time its text chunks. Never raises: failures are recorded."""
    res = RequestResult(index=req.index, prompt_tokens=req.prompt_len)
    start = time.perf_counter()
    res.start_s = start - t0
    last, chunks, usage_tokens = start, 0, None
    try:
        async with client.stream("POST", path, json=body) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error_kind = f"HTTP {resp.status_code}"
                res.error = f"HTTP {resp.status_code}: {_error_message(await resp.aread())}"
                return res
            if req.cancel_after == 0:
                res.cancelled = True
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    res.error_kind = "error in stream"
                    res.error = f"error in stream: {_error_message(data.encode())}"
                    return res
                if carries_text(event):
                    now = time.perf_counter()
                    if chunks == 0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last, chunks = now, chunks + 1
                    if chunks == req.cancel_after:
                        res.cancelled = True
                        return res
                usage = event.get("usage") or {}
                usage_tokens = usage.get("completion_tokens", usage_tokens)
                res.prompt_tokens = usage.get("prompt_tokens", res.prompt_tokens)
    except Exception as e:  # one request's failure (network, timeout, bad JSON) ends only it
        res.error_kind = type(e).__name__
        res.error = f"{type(e).__name__}: {e}"[:300]
        return res
    if chunks == 0:
        res.error_kind = res.error = "no text streamed"
        return res
    res.success, res.latency = True, last - start
    res.output_tokens = usage_tokens if usage_tokens is not None else chunks
    return res


async def run_requests(client, cfg: BenchConfig, model: str,
                       requests: list[BenchRequest]) -> tuple[list[RequestResult], float]:
    """Send the requests on their arrival schedule; returns results and the duration (s)."""
    from tqdm import tqdm

    offsets = arrival_offsets(cfg)
    slots = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
    bar = tqdm(total=len(requests), disable=not cfg.progress, desc="requests")
    path = ENDPOINTS[cfg.endpoint]
    t0 = time.perf_counter()

    async def one(req: BenchRequest, offset: float) -> RequestResult:
        await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
        async with slots or nullcontext():
            res = await send_request(client, path, request_body(cfg, model, req), req, t0)
        bar.update(1)
        return res

    try:
        results = await asyncio.gather(*(one(r, float(o)) for r, o in zip(requests, offsets)))
    finally:
        bar.close()
    return list(results), time.perf_counter() - t0


async def run_benchmark(cfg: BenchConfig) -> BenchResult:
    """Prepare prompts, run the load, compute the metrics and write the result files."""
    try:
        import httpx
    except ImportError as e:
        raise ImportError("llmsys bench serve needs httpx: pip install 'llmsys[serve]'") from e
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=cfg.root_url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(cfg.timeout_s)) as client:
        model = cfg.model or await fetch_model(client)
        requests, source = await make_requests(client, model, cfg.num_prompts, cfg.input_len,
                                               cfg.output_len, cfg.cancel_fraction, cfg.seed)
        results, duration = await run_requests(client, cfg, model, requests)
    metrics = compute_metrics(results, duration, cfg.goodput_ms, cfg.percentiles)
    out = BenchResult(config=cfg, model=model, prompt_source=source, metrics=metrics,
                      requests=requests, results=results,
                      table=format_table(metrics, cfg.percentiles))
    if cfg.result_dir is not None:
        out.json_path, out.png_path = write_results(out)
    return out


def write_results(out: BenchResult) -> tuple[Path, Path]:
    cfg = out.config
    cfg.result_dir.mkdir(parents=True, exist_ok=True)
    base = f"serve-{cfg.endpoint}-rate{cfg.request_rate:g}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem, n = base, 0
    while (cfg.result_dir / f"{stem}.json").exists():  # runs in the same second
        n += 1
        stem = f"{base}-{n}"
    header = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": out.model,
              "prompt_source": out.prompt_source,
              "config": asdict(cfg) | {"api_key": "***" if cfg.api_key else None}}
    json_path, png_path = cfg.result_dir / f"{stem}.json", cfg.result_dir / f"{stem}.png"
    requested = [{"input_len": r.prompt_len, "max_tokens": r.output_len,
                  "cancel_after": r.cancel_after} for r in out.requests]
    write_json(json_path, header, out.metrics, out.results, requested)
    title = f"{out.model} · {cfg.endpoint} · rate {cfg.request_rate:g}/s · {cfg.num_prompts} req"
    write_histograms(png_path, out.results, cfg.goodput_ms, title)
    return json_path, png_path


# ---------------------------------------------------------------------------- command line


def _length_range(text: str) -> tuple[int, int]:
    """'128' or '64:256'."""
    lo, _, hi = text.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or MIN:MAX (integers)") from None


def _slo(text: str) -> tuple[str, float]:
    """'ttft:500' -> ('ttft', 500.0)."""
    name, _, value = text.partition(":")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME:MS with NAME one of {', '.join(SLO_NAMES)}") from None


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "numbers in [0, 100]") from None


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second (inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the arrival gaps: 1 is Poisson, <1 burstier")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--input-len", type=_length_range, default=(128, 128), metavar="MIN:MAX")
    p.add_argument("--output-len", type=_length_range, default=(128, 128), metavar="MIN:MAX")
    p.add_argument("--goodput", type=_slo, nargs="+", default=[], metavar="NAME:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:5000")
    p.add_argument("--percentiles", type=_percentiles, default=(99.0,),
                   help="comma-separated latency percentiles to report (default 99)")
    p.add_argument("--model", default=None, help="default: the first of /v1/models")
    p.add_argument("--api-key", default=None)
    p.add_argument("--endpoint", default="completions", choices=list(ENDPOINTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cancel-fraction", type=float, default=0.0,
                   help="fraction of requests closed mid-stream (soak test)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--result-dir", type=Path, default=None,
                   help="write a JSON result and a latency histogram PNG here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        base_url=args.base_url, num_prompts=args.num_prompts, request_rate=args.request_rate,
        burstiness=args.burstiness, max_concurrency=args.max_concurrency,
        input_len=args.input_len, output_len=args.output_len, goodput_ms=dict(args.goodput),
        model=args.model, api_key=args.api_key, endpoint=args.endpoint, seed=args.seed,
        cancel_fraction=args.cancel_fraction, percentiles=args.percentiles,
        result_dir=args.result_dir, timeout_s=args.timeout, progress=not args.no_progress)


def cmd_bench_serve(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)  # validate before touching the network
    out = asyncio.run(run_benchmark(cfg))
    print(f"model {out.model}, {cfg.endpoint} endpoint, prompts from {out.prompt_source}")
    print(out.table)
    for path in (out.json_path, out.png_path):
        if path is not None:
            print(f"wrote {path}")
