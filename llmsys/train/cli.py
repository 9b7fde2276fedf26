"""`llmsys train …`: the training subcommands.

    llmsys train tokenizer --input FILE... --vocab-size 4096 --out DIR
    llmsys train pretrain --data FILE... --tokenizer DIR --out DIR [--hidden-size 256 ...]
    llmsys train sft --data chats.jsonl --model DIR --out DIR [--label-smoothing 0.1 ...]

Data files are text (one document per file) or JSONL ({"text": ...} per line; chats:
{"messages": [...], "tools": [...]}). `--resume` continues from the checkpoint in --out.
Under `torchrun --standalone --nproc_per_node N -m llmsys.cli train pretrain ...` the ranks
share the work (DistributedDataParallel; NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import argparse

from llmsys.train.organism import BUNDLED_NAME
from llmsys.train.trainer import TrainConfig


def _add_loop_args(p: argparse.ArgumentParser, lr: float, steps: int) -> None:
    p.add_argument("--out", required=True, help="output directory (checkpoint, history, PNG)")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per packed row")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=None, help="final lr (default lr / 10)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: steps / 20")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--eval-fraction", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def _train_config(args: argparse.Namespace, label_smoothing: float = 0.0) -> TrainConfig:
    return TrainConfig(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr,
        min_lr=args.lr / 10 if args.min_lr is None else args.min_lr,
        warmup_steps=args.steps // 20 if args.warmup_steps is None else args.warmup_steps,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        label_smoothing=label_smoothing, eval_every=args.eval_every,
        save_every=args.save_every, seed=args.seed, device=args.device)


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from llmsys.train.data import read_texts
    from llmsys.train.tokenizer import save_tokenizer, train_tokenizer

    backend = train_tokenizer(read_texts(args.input), args.vocab_size,
                              split_digits=not args.no_split_digits,
                              split_capitals=not args.no_split_capitals)
    path = save_tokenizer(backend, args.out, model_max_length=args.model_max_length)
    print(f"wrote a {args.vocab_size}-token byte-level BPE tokenizer to {path}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from llmsys.train.pretrain import ModelShape, pretrain

    shape = ModelShape(hidden_size=args.hidden_size, num_layers=args.layers,
                       num_heads=args.heads, num_kv_heads=args.kv_heads,
                       intermediate_size=args.intermediate_size,
                       max_position_embeddings=args.max_position_embeddings)
    history = pretrain(args.data, args.tokenizer, _train_config(args), shape=shape,
                       seq_len=args.seq_len or shape.max_position_embeddings,
                       eval_fraction=args.eval_fraction, resume=args.resume)
    _report(history, args.out)


def cmd_sft(args: argparse.Namespace) -> None:
    from llmsys.train.sft import sft

    history = sft(args.data, args.model, _train_config(args, args.label_smoothing),
                  seq_len=args.seq_len, eval_fraction=args.eval_fraction, resume=args.resume)
    _report(history, args.out)


def _report(history, out: str) -> None:
    last = f", eval loss {history.eval_loss[-1]:.4f}" if history.eval_loss else ""
    print(f"trained {history.steps[-1] if history.steps else 0} steps in "
          f"{history.seconds:.0f} s: loss {history.loss[-1]:.4f}{last}; checkpoint in {out}")


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tokenizer, pretrain, fine-tune on chats")
    train = p.add_subparsers(dest="train_command", required=True)

    p = train.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    p.add_argument("--input", nargs="+", required=True, help="text or JSONL files")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--out", required=True)
    p.add_argument("--model-max-length", type=int, default=4096)
    p.add_argument("--no-split-digits", action="store_true",
                   help="let BPE merge digits (default: one token per digit)")
    p.add_argument("--no-split-capitals", action="store_true",
                   help="let a space merge into the capitalised word after it (default: the "
                        "space is its own token, so names tokenize the same everywhere)")
    p.set_defaults(func=cmd_tokenizer)

    p = train.add_parser("pretrain", help="pretrain a Llama-shaped model from scratch")
    p.add_argument("--data", nargs="+", required=True, help="text or JSONL files")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=768)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    _add_loop_args(p, lr=3e-3, steps=1000)
    p.set_defaults(func=cmd_pretrain)

    p = train.add_parser("sft", help="supervised fine-tuning on chat JSONL")
    p.add_argument("--data", required=True, help="chat JSONL file")
    p.add_argument("--model", required=True, help="checkpoint directory to start from")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    _add_loop_args(p, lr=1e-3, steps=500)
    p.set_defaults(func=cmd_sft)


def cmd_eval_organism(args: argparse.Namespace) -> None:
    import json

    from llmsys.train.organism import DEFAULT_OUT, evaluate_bundled
    from llmsys.train.organism_data import eval_tasks, make_knowledge_base
    from llmsys.train.organism_eval import evaluate, evaluate_agent, format_report

    if args.base_url:
        kb = make_knowledge_base(args.seed)
        run = evaluate_agent if args.agent else evaluate
        rep = run(args.base_url, args.served_model, eval_tasks(kb, args.n_per_kind,
                  seed=args.seed + 2), kb, api_key=args.api_key)
    else:
        rep = evaluate_bundled(args.model or DEFAULT_OUT, seed=args.seed,
                               n_per_kind=args.n_per_kind, device=args.device,
                               agent=args.agent)
    print(format_report(rep))
    if args.agent:
        print(f"largest token use of a task: {rep['max_task_tokens']} "
              f"(budget {rep['token_budget']})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rep, f, indent=1)
        print(f"wrote {args.out}")


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluations (eval organism: the bundled model's tasks)")
    evals = p.add_subparsers(dest="eval_command", required=True)
    p = evals.add_parser("organism", help="held-out tool-use tasks through an OpenAI server")
    p.add_argument("--model", default=None,
                   help="checkpoint to serve in-process (default: the bundled model)")
    p.add_argument("--base-url", default=None, help="use this server instead (…/v1)")
    p.add_argument("--served-model", default=BUNDLED_NAME, help="model id at --base-url")
    p.add_argument("--api-key", default="none")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-per-kind", type=int, default=50, help="tasks of each kind")
    p.add_argument("--seed", type=int, default=0, help="the seed the data was made with")
    p.add_argument("--out", default=None, help="write the full report (JSON) here")
    p.add_argument("--agent", action="store_true",
                   help="run the tasks through llmsys.agent (a token budget per task)")
    p.set_defaults(func=cmd_eval_organism)
