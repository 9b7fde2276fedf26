"""The `llmsys` command.

    llmsys generate [--model DIR] [--dtype auto] [--max-tokens 64] [--temperature 0] "prompt"
    llmsys chat [--model DIR]               # interactive; tokens stream as they come
    llmsys tiny-checkpoint DIR --family llama [--hidden-size 256 --layers 4 ...]
    llmsys serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY ...]  # OpenAI API
    llmsys bench serve --base-url URL --num-prompts N --request-rate R [...]  # load a server
    llmsys train tokenizer|pretrain|sft ...  # see llmsys/train/cli.py
    llmsys eval organism [--model DIR | --base-url URL]  # the bundled model's tool-use tasks

Without --model, the bundled model (models/llmsys-tiny-chat) is used.
Errors a user can cause (bad paths, bad values) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from llmsys.errors import CheckpointError, TemplateError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory (Hugging Face layout); default: the bundled model")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--max-model-len", type=int, default=None)


def _model_dir(args: argparse.Namespace) -> str:
    """--model, or the bundled model (models/llmsys-tiny-chat) when it is not given."""
    if args.model is not None:
        return args.model
    from llmsys.train.organism import DEFAULT_OUT

    if not (DEFAULT_OUT / "config.json").is_file():
        raise CheckpointError(f"no --model given and the bundled model is not at {DEFAULT_OUT}; "
                              "pass --model DIR or build it with `make organism`")
    return str(DEFAULT_OUT)


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)


def _sampling_params(args: argparse.Namespace):
    from llmsys import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p, max_tokens=args.max_tokens, seed=args.seed)


def _load(args: argparse.Namespace):
    from llmsys import LLM

    return LLM(_model_dir(args), dtype=args.dtype, device=args.device,
               max_model_len=args.max_model_len)


def cmd_generate(args: argparse.Namespace) -> None:
    params = _sampling_params(args)  # validate before the (slow) load
    llm = _load(args)
    start = time.perf_counter()
    out = llm.generate(args.prompt, params)[0]
    elapsed = time.perf_counter() - start
    print(out.text)
    n = len(out.token_ids)
    print(f"[{len(out.prompt_token_ids)} prompt tokens, {n} generated in {elapsed:.2f} s: "
          f"{n / elapsed:.1f} tokens/s, finish_reason={out.finish_reason}]", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    params = _sampling_params(args)
    llm = _load(args)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print("Chatting with", _model_dir(args), "- an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except EOFError:
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        reply = []
        try:
            for event in llm.stream(llm.render_chat(messages), params):
                reply.append(event.text)
                print(event.text, end="", flush=True)
        except ValueError as e:  # e.g. the conversation outgrew the context: say so, go on
            print(f"error: {e}", file=sys.stderr)
            messages.pop()
            continue
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_tiny_checkpoint(args: argparse.Namespace) -> None:
    from llmsys.testing import make_tiny_checkpoint

    overrides = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size,
                 "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
                 "num_key_value_heads": args.kv_heads}
    path = make_tiny_checkpoint(args.family, args.path, seed=args.seed, dtype=args.dtype,
                                **overrides)
    print(f"wrote a random-weight {args.family} checkpoint to {path}")


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from llmsys.serve import ServerConfig, run_server
    except ImportError as e:
        print(f"llmsys serve: error: {e}; install the extra: pip install 'llmsys[serve]'",
              file=sys.stderr)
        raise SystemExit(2) from None

    keys = args.api_key or ([os.environ["LLMSYS_API_KEY"]] if os.environ.get("LLMSYS_API_KEY")
                            else [])
    model = _model_dir(args)
    from llmsys.train.organism import BUNDLED_NAME

    name = args.served_model_name or (BUNDLED_NAME if args.model is None else None)
    run_server(ServerConfig(
        model=model, host=args.host, port=args.port, api_keys=keys,
        served_model_name=name, dtype=args.dtype, device=args.device,
        max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_body_bytes=args.max_body_bytes, max_n=args.max_n,
        max_concurrent_requests=args.max_concurrent_requests))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmsys", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="complete one prompt and print the text and tokens/s")
    _add_model_args(p)
    _add_sampling_args(p, max_tokens=64)
    p.add_argument("prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat interactively with a model, streaming its replies")
    _add_model_args(p)
    _add_sampling_args(p, max_tokens=256)
    p.add_argument("--system", default=None, help="a system message")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("tiny-checkpoint", help="write a small random-weight checkpoint")
    p.add_argument("path")
    p.add_argument("--family", default="llama",
                   choices=["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe"])
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_checkpoint)

    p = sub.add_parser("serve", help="serve a model over the OpenAI API (chat, completions)")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--api-key", action="append", default=None,
                   help="accept this key (repeatable; default: $LLMSYS_API_KEY, else none)")
    p.add_argument("--served-model-name", default=None, help="the model id clients use")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-body-bytes", type=int, default=4 << 20)
    p.add_argument("--max-n", type=int, default=16, help="completions per request")
    p.add_argument("--max-concurrent-requests", type=int, default=256,
                   help="requests in flight; more get 429")
    p.set_defaults(func=cmd_serve)

    from llmsys.bench.serve import add_serve_args, cmd_bench_serve

    p = sub.add_parser("bench", help="benchmarks (bench serve: load an OpenAI-compatible server)")
    bench = p.add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("serve", help="stream requests to a server; report latency, goodput")
    add_serve_args(p)
    p.set_defaults(func=cmd_bench_serve)

    from llmsys.train.cli import add_eval_parser, add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    from llmsys.agent.cli import add_agent_parser

    add_agent_parser(sub)
    from llmsys.rag.cli import add_rag_parser

    add_rag_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, TemplateError, ValueError, OSError, ImportError) as e:
        print(f"llmsys {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
