"""Offline throughput: llmsys's engine against `transformers.generate`, same run.

    python benchmarks/throughput.py [--num-requests 64] [--input-len 32 512]
                                    [--output-len 32 256] [--hf-batch-sizes 16 64]

The nano-vllm workload scaled to a 2-core CPU: random prompts with random input and output
lengths (uniform in the given ranges, `ignore_eos`), on a ~110M-parameter Llama-shaped
random checkpoint in float32. llmsys gets every request at once (`LLM.generate`);
transformers runs them in batches sorted by prompt length (left padding, greedy, exactly
`max_new_tokens` each; a batch decodes until its longest request is done), for each batch
size given, and its best is compared. Prints output tokens/s and the ratio; writes
benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from llmsys import LLM, SamplingParams
from llmsys.testing import LLAMA_110M, make_tiny_checkpoint

SHAPE = LLAMA_110M


def workload(n: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab: int,
             seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(*input_len))],
             rng.randint(*output_len)) for _ in range(n)]


def run_llmsys(path: Path, requests: list[tuple[list[int], int]]) -> tuple[float, int]:
    llm = LLM(path, dtype="float32", max_num_seqs=len(requests))
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in requests]
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2))  # warm-up
    start = time.perf_counter()
    outs = llm.generate([p for p, _ in requests], params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.token_ids) for o in outs)


@torch.inference_mode()
def run_transformers(path: Path, requests: list[tuple[list[int], int]],
                     batch_size: int) -> tuple[float, int]:
    import transformers
    from tqdm import tqdm

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]))
    produced = 0
    start = time.perf_counter()
    for b in tqdm(range(0, len(order), batch_size), desc=f"transformers bs={batch_size}"):
        chunk = [requests[i] for i in order[b:b + batch_size]]
        width = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk])
        longest = max(m for _, m in chunk)
        model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                       min_new_tokens=longest, pad_token_id=0)
        produced += sum(m for _, m in chunk)  # tokens past a request's own length are waste
    return time.perf_counter() - start, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--input-len", type=int, nargs=2, default=[32, 512])
    parser.add_argument("--output-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_checkpoint("llama", Path(tmp) / "llama-110m", **SHAPE)
        requests = workload(args.num_requests, tuple(args.input_len), tuple(args.output_len),
                            SHAPE["vocab_size"])
        print(f"{len(requests)} requests, input {args.input_len}, output {args.output_len}, "
              f"{sum(m for _, m in requests)} output tokens in all", flush=True)
        ours_s, ours_tokens = run_llmsys(path, requests)
        print(f"llmsys: {ours_tokens / ours_s:.1f} output tok/s ({ours_s:.1f} s)", flush=True)
        hf = {}
        for bs in args.hf_batch_sizes:
            hf_s, hf_tokens = run_transformers(path, requests, bs)
            hf[bs] = hf_tokens / hf_s
            print(f"transformers bs={bs}: {hf[bs]:.1f} output tok/s ({hf_s:.1f} s)", flush=True)
    best = max(hf, key=hf.get)
    ratio = ours_tokens / ours_s / hf[best]
    print(f"ratio llmsys / transformers (best, bs={best}): {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "llmsys_tok_s": ours_tokens / ours_s,
                               "transformers_tok_s": hf, "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
