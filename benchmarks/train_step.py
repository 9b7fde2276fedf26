"""Training step throughput against transformers: forward + backward + AdamW, same shape.

    python benchmarks/train_step.py [--layers 6 --hidden 256 --batch 16 --seq-len 512] [--steps 8]

Both sides train the bundled model's shape (Llama, tied embeddings, vocabulary 4096) in
float32 on the same random token rows:
- llmsys: `trainer.token_loss_sum` on packed rows (the per-document attention mask the
  trainer uses; here 4 documents per row) and `llmsys.train.optim.AdamW`;
- transformers: `LlamaForCausalLM(input_ids, labels=...)` (causal SDPA, one document per
  row) and `torch.optim.AdamW`.
Steps alternate between the two (the machine is noisy); after 2 warm-up steps each, the
median step time gives tokens/s and the ratio. Results: benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()

    import transformers

    from llmsys.model.config import ModelConfig
    from llmsys.model.transformer import Transformer
    from llmsys.train.data import Example, collate, pack
    from llmsys.train.optim import AdamW
    from llmsys.train.trainer import init_weights, token_loss_sum

    # 1. the same config on both sides
    hf_config = {"model_type": "llama", "vocab_size": args.vocab, "hidden_size": args.hidden,
                 "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
                 "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
                 "max_position_embeddings": args.seq_len, "rms_norm_eps": 1e-5,
                 "rope_theta": 10000.0, "tie_word_embeddings": True}
    ours = Transformer(ModelConfig.from_hf(hf_config))
    init_weights(ours, 0)
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **{k: v for k, v in hf_config.items() if k != "model_type"},
        attn_implementation="sdpa"))
    opt_ours = AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    # 2. data: rows of 4 documents for llmsys, whole rows for transformers
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen)
    quarter = args.seq_len // 4
    examples = [Example(row[i:i + quarter].tolist(), [True] * quarter)
                for row in ids for i in range(0, args.seq_len, quarter)]
    batch = collate(pack(examples, args.seq_len, pad_id=0))

    def step_ours() -> None:
        count = int((batch["labels"] != -100).sum())
        (token_loss_sum(ours, batch) / count).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs() -> None:
        theirs(input_ids=ids, labels=ids).loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    # 3. alternate, warm up, take medians
    times: dict[str, list[float]] = {"llmsys": [], "transformers": []}
    for i in range(args.steps + 2):
        for name, fn in (("llmsys", step_ours), ("transformers", step_theirs)):
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
        print(f"step {i + 1}/{args.steps + 2}", flush=True)
    tokens = args.batch * args.seq_len
    result = {"args": vars(args), "threads": torch.get_num_threads(),
              "step_s": times, "tokens_per_s": {}}
    for name, ts in times.items():
        result["tokens_per_s"][name] = tokens / statistics.median(ts)
    result["ratio"] = result["tokens_per_s"]["llmsys"] / result["tokens_per_s"]["transformers"]
    print(f"llmsys {result['tokens_per_s']['llmsys']:.0f} tok/s, transformers "
          f"{result['tokens_per_s']['transformers']:.0f} tok/s: ratio {result['ratio']:.2f}")
    out = Path(__file__).parent / "results" / "train_step.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
