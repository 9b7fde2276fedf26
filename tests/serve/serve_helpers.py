"""Helpers for the server tests: polling, a Prometheus text parser, SSE reading."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

MODEL = "tiny-llama"  # the served model name of the test servers
CONTEXT = 4096  # their checkpoint's context length

def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` (a few ms apart) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """A minimal Prometheus text-format (0.0.4) parser: {(name, labels): value}. Checks that
    every sample follows a TYPE line for its family."""
    samples: dict[tuple[str, frozenset], float] = {}
    families: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            assert parts[1] in ("HELP", "TYPE"), line
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                families[parts[2]] = parts[3]
            continue
        name_labels, value = line.rsplit(" ", 1)
        labels: frozenset = frozenset()
        name = name_labels
        if "{" in name_labels:
            name, rest = name_labels.split("{", 1)
            assert rest.endswith("}"), line
            pairs = [p for p in _split_labels(rest[:-1]) if p]
            labels = frozenset(tuple(p.split("=", 1)) for p in pairs)
            assert all(v.startswith('"') and v.endswith('"') for _, v in labels), line
        family = next((f for f in (name, name.rsplit("_", 1)[0]) if f in families), None)
        assert family is not None, f"sample without a TYPE line: {line}"
        samples[(name, frozenset((k, v.strip('"')) for k, v in labels))] = float(value)
    return samples


def _split_labels(text: str) -> list[str]:
    out, current, quoted = [], "", False
    for ch in text:
        if ch == '"' and not current.endswith("\\"):
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    return out + [current]


def metric(samples: dict, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name} {labels}: {len(found)} samples"
    return found[0]


def sse_events(lines: Iterator[str]) -> list:
    """The `data:` payloads of a Server-Sent Events stream: JSON objects, then "[DONE]"."""
    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events
