"""Time to first token for requests that share a long prefix, with and without prefix caching.

    python benchmarks/prefix_cache.py [--prefix 1024] [--suffix 32] [--requests 8]

A ~110M-parameter Llama-shaped random checkpoint (float32). One request primes the cache
with the shared prefix; then each of `--requests` requests (the prefix plus its own random
suffix, one output token) is timed from `add_request` to its first token, one at a time,
with `enable_prefix_caching` on and off. Prints median TTFTs and the speed-up; writes
benchmarks/results/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from llmsys import LLM, SamplingParams
from llmsys.testing import LLAMA_110M, make_tiny_checkpoint

SHAPE = LLAMA_110M


def ttfts(llm: LLM, prefix: list[int], suffixes: list[list[int]]) -> list[float]:
    engine, params = llm.engine, SamplingParams(temperature=0, max_tokens=1)
    engine.add_request("prime", prefix + [1], params)
    while engine.has_unfinished():
        engine.step()
    times = []
    for i, suffix in enumerate(suffixes):
        start = time.perf_counter()
        engine.add_request(f"r{i}", prefix + suffix, params)
        while engine.has_unfinished():
            engine.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefix", type=int, default=1024)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/prefix_cache.json")
    args = parser.parse_args()
    rng = random.Random(0)
    vocab = SHAPE["vocab_size"]
    prefix = [rng.randrange(vocab) for _ in range(args.prefix)]
    suffixes = [[rng.randrange(vocab) for _ in range(args.suffix)] for _ in range(args.requests)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_checkpoint("llama", Path(tmp) / "llama-110m", **SHAPE)
        for caching in (True, False):
            llm = LLM(path, dtype="float32", enable_prefix_caching=caching)
            times = ttfts(llm, prefix, suffixes)
            results[caching] = statistics.median(times)
            print(f"prefix caching {'on ' if caching else 'off'}: median TTFT "
                  f"{results[caching] * 1e3:.1f} ms over {len(times)} requests "
                  f"(prefix hits: {llm.engine.blocks.prefix_hits} tokens)", flush=True)
    speedup = results[False] / results[True]
    print(f"speed-up from prefix caching: {speedup:.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "ttft_cached_s": results[True],
                               "ttft_uncached_s": results[False], "speedup": speedup},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
