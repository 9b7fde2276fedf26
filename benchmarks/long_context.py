"""Peak memory of long prefills: linear in sequence length (the KV cache), no T^2 term.

    python benchmarks/long_context.py [--lengths 8192 32768 131072]

A small Llama-shaped random checkpoint (4 layers, hidden 256, 4 heads, full attention,
float32). Each length runs in a fresh process: one request of that many prompt tokens and
one output token, with chunked prefill (2,048 tokens a step), tiled attention and logits
for the last position only. The process's peak resident memory (VmHWM) is recorded, and
so is the KV cache's size. Writes benchmarks/results/long_context.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from llmsys.testing import make_tiny_checkpoint

SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, intermediate_size=768, max_position_embeddings=262144)

PROBE = r"""
import json, sys, time, torch
from llmsys import LLM, SamplingParams

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

path, n = sys.argv[1], int(sys.argv[2])
llm = LLM(path, dtype="float32", max_num_seqs=1, max_num_batched_tokens=2048,
          max_model_len=n + 1, enable_prefix_caching=False)
kv_bytes = sum(k.numel() * k.element_size() * 2 for k in llm.engine.runner.k_caches)
base = status("VmRSS")
prompt = torch.randint(0, llm.config.vocab_size, (n,)).tolist()
engine, start, done = llm.engine, time.perf_counter(), 0
engine.add_request("long", prompt, SamplingParams(max_tokens=1, ignore_eos=True))
while engine.has_unfinished():
    engine.step()
    done = min(n, done + 2048)
    print(f"\r  {done}/{n} tokens, {time.perf_counter() - start:.0f} s", end="",
          file=sys.stderr, flush=True)
print(file=sys.stderr)
print(json.dumps({"tokens": n, "seconds": time.perf_counter() - start,
                  "peak_rss": status("VmHWM"), "rss_before_prompt": base,
                  "kv_cache_bytes": kv_bytes}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--out", default="benchmarks/results/long_context.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_checkpoint("llama", Path(tmp) / "small", **SHAPE)
        for n in args.lengths:
            print(f"prefill of {n} tokens ...", flush=True)
            r = subprocess.run([sys.executable, "-c", PROBE, str(path), str(n)],
                               stdout=subprocess.PIPE, text=True, check=True)
            row = json.loads(r.stdout)
            rows.append(row)
            print(f"  peak RSS {row['peak_rss'] / 2**20:.0f} MiB, KV cache "
                  f"{row['kv_cache_bytes'] / 2**20:.0f} MiB, {row['seconds']:.0f} s "
                  f"({n / row['seconds']:.0f} tok/s)", flush=True)
    if len(rows) >= 2:  # growth per token between the two longest runs vs KV bytes per token
        a, b = rows[-2], rows[-1]
        per_token = (b["peak_rss"] - a["peak_rss"]) / (b["tokens"] - a["tokens"])
        kv_per_token = b["kv_cache_bytes"] / b["tokens"]
        print(f"peak memory grows {per_token / 1024:.1f} KiB per token; the KV cache takes "
              f"{kv_per_token / 1024:.1f} KiB per token")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, out.with_suffix(".png"))


def _plot(rows: list[dict], png: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'llmsys[bench]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["peak_rss"] / 2**20 for r in rows], "o-", label="peak RSS")
    ax.plot(xs, [r["kv_cache_bytes"] / 2**20 for r in rows], "s--", label="KV cache")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("MiB")
    ax.set_title("Long prefill: memory grows linearly")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
