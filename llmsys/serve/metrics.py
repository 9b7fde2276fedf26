"""Server metrics in the Prometheus text format (version 0.0.4), names prefixed `llmsys:`.

Gauges come from an `EngineStats` snapshot the engine loop takes after every step; counters
and histograms are updated by the loop as requests arrive, produce tokens and finish. Every
sample carries a `model_name` label. `Metrics.render()` writes the text `/metrics` serves:

    # HELP llmsys:time_to_first_token_seconds Time from arrival to the first token.
    # TYPE llmsys:time_to_first_token_seconds histogram
    llmsys:time_to_first_token_seconds_bucket{model_name="m",le="0.01"} 3
    ...
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class EngineStats:
    """What the engine holds right now (sequences, not requests: a request with n=4 is 4)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks referenced by live sequences
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which found
    num_preemptions: int = 0


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.lock = threading.Lock()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished = dict.fromkeys(FINISH_REASONS, 0)
        self.ttft, self.itl = Histogram(), Histogram()
        self.e2e, self.queue_time = Histogram(), Histogram()

    # ---- updates (from the engine loop) ------------------------------------------------

    def request_added(self, num_prompt_tokens: int) -> None:
        with self.lock:
            self.prompt_tokens += num_prompt_tokens

    def request_scheduled(self, queue_time: float) -> None:
        with self.lock:
            self.queue_time.observe(queue_time)

    def tokens_generated(self, num_tokens: int, first: bool, latency: float) -> None:
        """`latency`: since arrival for the first tokens, since the last tokens otherwise."""
        with self.lock:
            self.generation_tokens += num_tokens
            (self.ttft if first else self.itl).observe(latency)

    def request_finished(self, finish_reasons: list[str], e2e_latency: float | None) -> None:
        """One count per completion (a request with n=2 counts twice)."""
        with self.lock:
            for reason in finish_reasons:
                self.finished[reason] = self.finished.get(reason, 0) + 1
            if e2e_latency is not None:
                self.e2e.observe(e2e_latency)

    # ---- the text ------------------------------------------------------------------------

    def render(self, stats: EngineStats) -> str:
        hit_rate = stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1)
        with self.lock:
            lines: list[str] = []
            self._scalar(lines, "num_requests_running", "gauge",
                         "Sequences in the running batch.", stats.num_running)
            self._scalar(lines, "num_requests_waiting", "gauge",
                         "Sequences waiting to be scheduled.", stats.num_waiting)
            self._scalar(lines, "kv_cache_usage_perc", "gauge",
                         "Fraction of KV-cache blocks in use (1 = full).", stats.kv_cache_usage)
            self._scalar(lines, "prefix_cache_hit_rate", "gauge",
                         "Prompt tokens found in the prefix cache / prompt tokens looked up.",
                         hit_rate)
            self._scalar(lines, "prefix_cache_queries_total", "counter",
                         "Prompt tokens looked up in the prefix cache.",
                         stats.prefix_cache_queries)
            self._scalar(lines, "prefix_cache_hits_total", "counter",
                         "Prompt tokens found in the prefix cache.", stats.prefix_cache_hits)
            self._scalar(lines, "num_preemptions_total", "counter",
                         "Sequences preempted (their KV cache freed, to be recomputed).",
                         stats.num_preemptions)
            self._scalar(lines, "prompt_tokens_total", "counter",
                         "Prompt tokens of admitted requests.", self.prompt_tokens)
            self._scalar(lines, "generation_tokens_total", "counter",
                         "Tokens generated.", self.generation_tokens)
            self._finished(lines)
            self._histogram(lines, "time_to_first_token_seconds",
                            "Time from arrival to the first token.", self.ttft)
            self._histogram(lines, "inter_token_latency_seconds",
                            "Time between a request's successive engine steps that gave tokens.",
                            self.itl)
            self._histogram(lines, "e2e_request_latency_seconds",
                            "Time from arrival to the last token.", self.e2e)
            self._histogram(lines, "request_queue_time_seconds",
                            "Time from arrival to the first step that computes the request.",
                            self.queue_time)
        return "\n".join(lines) + "\n"

    def _labels(self, **extra: str) -> str:
        pairs = {"model_name": self.model_name, **extra}
        return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())

    def _header(self, lines: list[str], name: str, kind: str, help_text: str) -> None:
        lines += [f"# HELP llmsys:{name} {help_text}", f"# TYPE llmsys:{name} {kind}"]

    def _scalar(self, lines: list[str], name: str, kind: str, help_text: str,
                value: float) -> None:
        self._header(lines, name, kind, help_text)
        lines.append(f"llmsys:{name}{{{self._labels()}}} {_number(value)}")

    def _finished(self, lines: list[str]) -> None:
        name = "request_success_total"
        self._header(lines, name, "counter",
                     "Finished completions by finish reason (abort: cancelled or disconnected).")
        for reason, count in self.finished.items():
            lines.append(f"llmsys:{name}{{{self._labels(finished_reason=reason)}}} {count}")

    def _histogram(self, lines: list[str], name: str, help_text: str, h: Histogram) -> None:
        self._header(lines, name, "histogram", help_text)
        cumulative = 0
        for bound, count in zip((*h.buckets, float("inf")), h.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            lines.append(f"llmsys:{name}_bucket{{{self._labels(le=le)}}} {cumulative}")
        lines.append(f"llmsys:{name}_sum{{{self._labels()}}} {_number(h.total)}")
        lines.append(f"llmsys:{name}_count{{{self._labels()}}} {h.count}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
