"""Metrics of a serving benchmark: per-request timings in, the report out (table, JSON, PNG).

Definitions (the same as vLLM's `bench serve`), all over successful requests only:
- TTFT: from sending a request to its first streamed chunk that carries text.
- E2EL: from sending a request to its last chunk that carries text.
- TPOT: (E2EL - TTFT) / (output tokens - 1), one value per request with > 1 output token.
- ITL: the gaps between consecutive text chunks, pooled over all requests.
- throughputs: completed requests, output tokens, and input + output tokens per second of
  benchmark duration (first send to last completion).
- goodput: requests per second that meet every SLO given (a request with a single output
  token counts as TPOT 0 here).
Times are reported in milliseconds; percentiles interpolate linearly (numpy's default).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SLO_NAMES = ("ttft", "tpot", "e2el")
LATENCY_NAMES = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestResult:
    """What one request did. Times in seconds; `start_s` is relative to the benchmark start."""

    index: int
    prompt_tokens: int
    success: bool = False
    cancelled: bool = False
    status: int | None = None
    error: str = ""  # the message, for failed requests
    error_kind: str = ""  # what failures are counted by: "HTTP 500", "ReadTimeout", ...
    start_s: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first; 0 for a single-token output."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass
class Distribution:
    """Summary of one latency metric, in milliseconds."""

    mean: float
    median: float
    std: float
    percentiles: dict[str, float]  # "p99" -> value


@dataclass
class BenchMetrics:
    completed: int
    failed: int
    cancelled: int
    errors: dict[str, int]  # error kind -> count
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    good_requests: int | None  # None when no SLO was given
    request_goodput: float | None
    latencies_ms: dict[str, Distribution | None]  # "ttft" | "tpot" | "itl" | "e2el"


def percentile_key(p: float) -> str:
    return f"p{p:g}"


def distribution(values_s: list[float], percentiles: tuple[float, ...]) -> Distribution | None:
    """Mean, median, std and the given percentiles of `values_s` (seconds), in ms."""
    if not values_s:
        return None
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    return Distribution(mean=float(ms.mean()), median=float(np.median(ms)), std=float(ms.std()),
                        percentiles={percentile_key(p): float(np.percentile(ms, p))
                                     for p in percentiles})


def meets_slos(r: RequestResult, slos_ms: dict[str, float]) -> bool:
    values = {"ttft": r.ttft, "tpot": r.tpot, "e2el": r.latency}
    return all(values[name] * 1000.0 <= limit for name, limit in slos_ms.items())


def compute_metrics(results: list[RequestResult], duration_s: float, slos_ms: dict[str, float],
                    percentiles: tuple[float, ...]) -> BenchMetrics:
    ok = [r for r in results if r.success]
    failed = [r for r in results if not r.success and not r.cancelled]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = sum(meets_slos(r, slos_ms) for r in ok) if slos_ms else None
    series = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.output_tokens > 1],
              "itl": [gap for r in ok for gap in r.itl], "e2el": [r.latency for r in ok]}
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    return BenchMetrics(
        completed=len(ok), failed=len(failed), cancelled=sum(r.cancelled for r in results),
        errors=dict(sorted(Counter(r.error_kind for r in failed).items())),
        duration_s=duration_s, total_input_tokens=total_in, total_output_tokens=total_out,
        request_throughput=len(ok) * per_s, output_throughput=total_out * per_s,
        total_token_throughput=(total_in + total_out) * per_s, good_requests=good,
        request_goodput=None if good is None else good * per_s,
        latencies_ms={name: distribution(values, percentiles) for name, values in series.items()})


_TITLES = {"ttft": "Time to first token", "tpot": "Time per output token (after the first)",
           "itl": "Inter-token latency", "e2el": "End-to-end latency"}


def format_table(m: BenchMetrics, percentiles: tuple[float, ...]) -> str:
    """A fixed-width report: counts and throughputs, then one block per latency metric."""
    width = 54

    def row(label: str, value: object) -> str:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        return f"{label + ':':<40}{text:>14}"

    def rule(title: str = "", fill: str = "-") -> str:
        return f" {title} ".center(width, fill) if title else fill * width

    errors = ", ".join(f"{kind} x{count}" for kind, count in m.errors.items())
    lines = [rule("Serving benchmark", "="), row("Successful requests", m.completed),
             row("Failed requests", m.failed)]
    lines += [f"  ({errors})"] if errors else []
    lines += [row("Cancelled requests", m.cancelled),
              row("Benchmark duration (s)", m.duration_s),
              row("Total input tokens", m.total_input_tokens),
              row("Total output tokens", m.total_output_tokens),
              row("Request throughput (req/s)", m.request_throughput)]
    if m.request_goodput is not None:
        lines += [row("Good requests (meet all SLOs)", m.good_requests),
                  row("Request goodput (req/s)", m.request_goodput)]
    lines += [row("Output token throughput (tok/s)", m.output_throughput),
              row("Total token throughput (tok/s)", m.total_token_throughput)]
    for name, d in m.latencies_ms.items():
        lines.append(rule(_TITLES[name]))
        if d is None:
            lines.append(row(f"{name.upper()} (ms)", "no data"))
            continue
        label = name.upper()
        lines += [row(f"Mean {label} (ms)", d.mean), row(f"Median {label} (ms)", d.median)]
        lines += [row(f"P{p:g} {label} (ms)", d.percentiles[percentile_key(p)])
                  for p in percentiles if p != 50]  # P50 is the median, printed above
    lines.append(rule(fill="="))
    return "\n".join(lines)


def _jsonable(x: object) -> object:
    """inf/NaN floats become strings, Paths strings, tuples lists: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path, header: dict, metrics: BenchMetrics, results: list[RequestResult],
               requested: list[dict]) -> None:
    """The run's settings, its metrics and every request's timings (seconds) in one file;
    `requested[i]` adds what request i asked for (its sampled lengths)."""
    requests = [want | asdict(r) | {"tpot": r.tpot} for want, r in zip(requested, results)]
    doc = header | {"metrics": asdict(metrics), "requests": requests}
    path.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")


def write_histograms(path: Path, results: list[RequestResult], slos_ms: dict[str, float],
                     title: str) -> None:
    """A 2x2 PNG of TTFT, TPOT, ITL and E2EL histograms (ms), SLOs drawn as dashed lines."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend state
    except ImportError as e:
        raise ImportError("the latency plot needs matplotlib: pip install 'llmsys[serve]'") from e
    ok = [r for r in results if r.success]
    series = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.output_tokens > 1],
              "itl": [gap for r in ok for gap in r.itl], "e2el": [r.latency for r in ok]}
    fig = Figure(figsize=(11, 7), layout="constrained")
    fig.suptitle(title)
    for ax, (name, values) in zip(fig.subplots(2, 2).flat, series.items()):
        ax.set_title(_TITLES[name], fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
        if values:
            ax.hist(np.asarray(values) * 1000.0, bins=min(50, max(5, len(values) // 4)))
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        if name in slos_ms:
            ax.axvline(slos_ms[name], color="red", linestyle="--",
                       label=f"SLO {slos_ms[name]:g} ms")
            ax.legend()
    fig.savefig(path, dpi=100)
