"""Single-stream decode speed as a fraction of the memory-bandwidth roofline.

    python benchmarks/decode.py [--tokens 128] [--dtypes float32 bfloat16]

Decoding one sequence reads every weight once per token, so tokens/s can be at most
copy bandwidth / bytes of weights read per token (all parameters but the input embedding
table). The copy bandwidth is measured here (a 1 GiB tensor copied, read + write bytes per
second). A ~134M-parameter Llama-shaped random checkpoint (hidden 768, 12 layers,
intermediate 2048, vocab 32000) decodes `--tokens` tokens greedily after a 16-token prompt,
in llmsys (`LLM`), in transformers (`generate`) and, where `gguf` and `llama-cpp-python` are
installed (`pip install .[llamacpp]`), in llama.cpp on the same weights converted to GGUF
(`llamacpp_decode.py`), all in the same run. Writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from llamacpp_decode import llama_cpp_available, llama_cpp_decode, write_gguf

from llmsys import LLM, SamplingParams
from llmsys.testing import LLAMA_110M, make_tiny_checkpoint

SHAPE = {**LLAMA_110M, "vocab_size": 32000}  # ~134M parameters


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read + write)."""
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes read per decoded token: every parameter (tied ones once) except the input
    embedding table, of which only one row is read (unless it doubles as the LM head)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.embed_tokens.weight
    if model.lm_head.weight is embed:
        return total
    return total - embed.numel() * embed.element_size()


def llmsys_decode(llm: LLM, tokens: int) -> float:
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    engine.add_request("d", list(range(16)), params)
    stamps = []
    while engine.has_unfinished():
        engine.step()
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # decode steps only (not the prefill)
    return 1 / statistics.median(gaps)


@torch.inference_mode()
def transformers_decode(path: Path, dtype: str, tokens: int) -> float:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype)).eval()
    ids = torch.arange(16)[None]
    kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
    return (tokens - 1) / (time.perf_counter() - start - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--out", default="benchmarks/results/decode.json")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, threads {torch.get_num_threads()}")
    llama_cpp_missing = llama_cpp_available()
    if llama_cpp_missing:
        print(f"llama.cpp skipped: {llama_cpp_missing}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            path = make_tiny_checkpoint("llama", Path(tmp) / dtype, dtype=dtype, **SHAPE)
            llm = LLM(path, dtype=dtype)
            ours = llmsys_decode(llm, args.tokens)
            model_bytes = weight_bytes(llm.model)
            del llm
            roofline = bandwidth / model_bytes
            hf = transformers_decode(path, dtype, args.tokens)
            row = {"dtype": dtype, "weight_bytes_per_token": model_bytes,
                   "roofline_tok_s": roofline, "llmsys_tok_s": ours, "transformers_tok_s": hf,
                   "llmsys_fraction": ours / roofline, "transformers_fraction": hf / roofline}
            line = (f"[{dtype}] roofline {roofline:.0f} tok/s; llmsys {ours:.1f} tok/s "
                    f"({ours / roofline:.0%}); transformers {hf:.1f} tok/s ({hf / roofline:.0%})")
            if not llama_cpp_missing:
                gguf = write_gguf(path, Path(tmp) / f"{dtype}.gguf", dtype)
                cpp = llama_cpp_decode(gguf, args.tokens, torch.get_num_threads())
                row.update(llama_cpp_tok_s=cpp, llama_cpp_fraction=cpp / roofline)
                line += f"; llama.cpp {cpp:.1f} tok/s ({cpp / roofline:.0%})"
            rows.append(row)
            print(line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"copy_bandwidth": bandwidth, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
