"""Prefill throughput of llmsys against HF transformers on the same checkpoint, same run.

    python benchmarks/forward.py [--tokens 512] [--repeats 5] [--dtypes float32 bfloat16]

Builds a ~110M-parameter Llama-shaped random checkpoint (hidden 768, 12 layers, 12 heads,
intermediate 2048, vocab 16384), then times one prefill forward (prompt in, last-position
logits out, no KV cache kept) in each library, alternating them, and prints medians and the
ratio llmsys / transformers. llmsys's model is `LLM(path, dtype=...).model`, so it includes
what `LLM` applies on load (on CPUs without native half-precision arithmetic, float32
compute for half-precision prefill matmuls). Results go to benchmarks/results/forward.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from llmsys import LLM
from llmsys.testing import LLAMA_110M, make_tiny_checkpoint

SHAPE = LLAMA_110M


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_dtype(path: Path, dtype: str, tokens: int, repeats: int) -> dict:
    import transformers

    torch_dtype = getattr(torch, dtype)
    llm = LLM(path, dtype=dtype)  # the model exactly as users get it
    ours, cfg = llm.model, llm.config
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(tokens)[None]

    @torch.inference_mode()
    def run_ours():
        return ours.logits(ours.hidden_states(ids, pos)[:, -1:])

    @torch.inference_mode()
    def run_hf():
        return hf(ids, use_cache=False, logits_to_keep=1).logits

    # Same answer first (a benchmark of a wrong model is worthless).
    diff = (run_ours().float() - run_hf().float()).abs().max().item()
    ours_t, hf_t = [], []
    for _ in range(repeats):  # alternate so drifts in machine load hit both
        ours_t += _time(run_ours, 1)
        hf_t += _time(run_hf, 1)
    o, h = statistics.median(ours_t), statistics.median(hf_t)
    return {"dtype": dtype, "tokens": tokens, "llmsys_tok_s": tokens / o,
            "transformers_tok_s": tokens / h, "ratio": h / o, "max_abs_logit_diff": diff,
            "llmsys_s": ours_t, "transformers_s": hf_t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--out", default="benchmarks/results/forward.json")
    args = parser.parse_args()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("building the ~110M-parameter checkpoint ...", flush=True)
        path = make_tiny_checkpoint("llama", Path(tmp) / "llama-110m", **SHAPE)
        for dtype in args.dtypes:
            print(f"[{dtype}] warming up and timing {args.repeats} prefills of {args.tokens} "
                  "tokens each ...", flush=True)
            row = bench_dtype(path, dtype, args.tokens, args.repeats)
            rows.append(row)
            print(f"[{dtype}] llmsys {row['llmsys_tok_s']:.0f} tok/s, transformers "
                  f"{row['transformers_tok_s']:.0f} tok/s, ratio {row['ratio']:.2f}x "
                  f"(max |logit diff| {row['max_abs_logit_diff']:.2e})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shape": SHAPE, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
