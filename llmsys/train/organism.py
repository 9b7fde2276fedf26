"""The bundled model, end to end: data → tokenizer → pretraining → SFT → evaluation → model card.

    make organism                                   # the committed models/llmsys-tiny-chat
    python -m llmsys.train.organism --out DIR [--work build/organism] [--quick]

1. Data (`organism_data`, `stdlib_corpus`): the knowledge base, synthetic tool-use chats and
   held-out evaluation tasks; English text from the standard library's docstrings.
2. Tokenizer: byte-level BPE (digits one per token) on the text and the rendered chats.
3. Pretraining on the standard-library text plus a share of the rendered chats (so the chat
   and tool-call syntax is familiar before fine-tuning) and short copy drills (so the model
   learns early to copy names and numbers, which every tool call needs).
4. SFT on the chats plus chats about entities made up for training only (so the model learns
   to copy unseen names rather than memorise the knowledge base): loss on assistant turns.
5. The checkpoint, tokenizer, knowledge base, loss curves and histories go to `--out`.
6. Evaluation through the real server (`organism_eval`), and the model card (README.md) with
   the data, size, recipe, times and scores.
Each stage writes into `--work` and is skipped when its output exists, so an interrupted
recipe continues where it stopped (training stages resume from their last checkpoint).
`--quick` runs the same stages at toy sizes in a few minutes, to check the recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmsys.model.chat_template import render_chat_template
from llmsys.train.pretrain import ModelShape, pretrain
from llmsys.train.sft import sft
from llmsys.train.tokenizer import COMPACT_CHAT_TEMPLATE, save_tokenizer, train_tokenizer
from llmsys.train.trainer import TrainConfig

BUNDLED_NAME = "llmsys-tiny-chat"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models" / BUNDLED_NAME
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "generation_config.json")


@dataclass
class Recipe:
    seed: int = 0
    vocab_size: int = 4096
    shape: ModelShape = field(default_factory=lambda: ModelShape(num_layers=4))
    seq_len: int = 512
    num_train_chats: int = 20_000
    num_eval_per_kind: int = 50
    pretrain_chats: int = 4_000  # rendered chats mixed into the pretraining text
    copy_drills: int = 10_000  # short copy exercises mixed in too (see organism_data)
    fresh_chats: int = 30_000  # SFT chats about entities outside the knowledge base, so
    fresh_entities: int = 5_000  # many that memorising them cannot pay: the model must copy
    stdlib_chars: int | None = None  # all of it
    # Many small steps rather than few big ones: copying (an induction circuit) appears after
    # a number of steps more than of tokens; and a peak lr of 3e-3 kept it from ever forming.
    pretrain_steps: int = 700
    pretrain_batch: int = 8
    pretrain_lr: float = 1e-3
    sft_steps: int = 2_000
    sft_batch: int = 8
    sft_lr: float = 8e-4

    @classmethod
    def quick(cls) -> Recipe:
        return cls(vocab_size=700, shape=ModelShape(hidden_size=64, num_layers=2, num_heads=4,
                                                    num_kv_heads=2, intermediate_size=128),
                   num_train_chats=400, num_eval_per_kind=4, pretrain_chats=100, copy_drills=50,
                   fresh_chats=200, fresh_entities=40,
                   stdlib_chars=300_000, pretrain_steps=20, pretrain_batch=4, sft_steps=20,
                   sft_batch=4)


def _render(chat: dict) -> str:
    return render_chat_template(COMPACT_CHAT_TEMPLATE, chat["messages"], tools=chat.get("tools"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _stage(name: str, done: Path) -> bool:
    """True when the stage must run (its output `done` is missing)."""
    if done.exists():
        print(f"[organism] {name}: done already ({done})")
        return False
    print(f"[organism] {name} ...")
    return True


def build(recipe: Recipe, work: Path, out: Path, *, device: str = "cpu",
          evaluate_model: bool = True) -> dict:
    """Run the recipe; return the summary written to `out`/training/summary.json."""
    from llmsys.train.organism_data import write_dataset
    from llmsys.train.stdlib_corpus import write_stdlib_corpus

    times_file = work / "times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    data = work / "data"
    # 1. data
    t0 = time.perf_counter()
    if _stage("data", data / "eval.jsonl"):
        data.mkdir(parents=True, exist_ok=True)
        write_stdlib_corpus(data / "stdlib.jsonl", max_chars=recipe.stdlib_chars)
        write_dataset(data, seed=recipe.seed, num_train=recipe.num_train_chats,
                      num_eval_per_kind=recipe.num_eval_per_kind)
        times["data_s"] = time.perf_counter() - t0
        times_file.write_text(json.dumps(times))
    chats = _read_jsonl(data / "train.jsonl")
    texts = [row["text"] for row in _read_jsonl(data / "stdlib.jsonl")]
    # 2. tokenizer
    t0 = time.perf_counter()
    tok_dir = work / "tokenizer"
    if _stage("tokenizer", tok_dir / "tokenizer_config.json"):
        backend = train_tokenizer(texts + [_render(c) for c in chats], recipe.vocab_size)
        save_tokenizer(backend, tok_dir, model_max_length=recipe.seq_len,
                       chat_template=COMPACT_CHAT_TEMPLATE)
        times["tokenizer_s"] = time.perf_counter() - t0
        times_file.write_text(json.dumps(times))
    # 3. pretraining: standard-library text + rendered chats + copy drills, as plain text
    mix = data / "pretrain_mix.jsonl"
    if not mix.exists():
        from llmsys.train.organism_data import copy_drills, make_knowledge_base

        drills = copy_drills(make_knowledge_base(recipe.seed), recipe.copy_drills,
                             seed=recipe.seed + 3)
        rendered = [{"text": _render(c)} for c in chats[: recipe.pretrain_chats]]
        rendered += [{"text": text} for text in drills]
        with open(mix, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rendered)
    pre_dir = work / "pretrain"
    if _stage("pretrain", pre_dir / "done"):
        cfg = TrainConfig(out_dir=pre_dir, steps=recipe.pretrain_steps,
                          batch_size=recipe.pretrain_batch, lr=recipe.pretrain_lr,
                          min_lr=recipe.pretrain_lr / 10,
                          warmup_steps=max(1, recipe.pretrain_steps // 20),
                          eval_every=max(1, recipe.pretrain_steps // 5),
                          save_every=max(1, recipe.pretrain_steps // 10), seed=recipe.seed,
                          device=device)
        pretrain([mix, data / "stdlib.jsonl"], tok_dir, cfg, shape=recipe.shape,
                 seq_len=recipe.seq_len, resume=True)
        (pre_dir / "done").touch()
    times["pretrain_s"] = _seconds(pre_dir)
    # 4. SFT on the chats, and as many about entities made up for training only
    sft_data = data / "sft.jsonl"
    if _stage("sft data", sft_data):
        _write_sft_data(recipe, chats, sft_data)
    sft_dir = work / "sft"
    if _stage("sft", sft_dir / "done"):
        cfg = TrainConfig(out_dir=sft_dir, steps=recipe.sft_steps, batch_size=recipe.sft_batch,
                          lr=recipe.sft_lr, min_lr=recipe.sft_lr / 10,
                          warmup_steps=max(1, recipe.sft_steps // 20),
                          eval_every=max(1, recipe.sft_steps // 5),
                          save_every=max(1, recipe.sft_steps // 10), seed=recipe.seed,
                          device=device)
        sft(sft_data, pre_dir, cfg, seq_len=recipe.seq_len, resume=True)
        (sft_dir / "done").touch()
    times["sft_s"] = _seconds(sft_dir)
    # 5. the bundled model
    _export(work, out)
    summary = {"recipe": asdict(recipe), "times": times, "device": device,
               "histories": {stage: _final(work / stage) for stage in ("pretrain", "sft")}}
    # 6. evaluation and model card
    if evaluate_model:
        from llmsys.train.organism_eval import format_report

        t0 = time.perf_counter()
        rep = evaluate_bundled(out, seed=recipe.seed, n_per_kind=recipe.num_eval_per_kind,
                               device=device)
        summary["eval"] = {k: v for k, v in rep.items() if k != "results"}
        summary["eval_s"] = time.perf_counter() - t0
        (out / "training" / "eval.json").write_text(json.dumps(rep, indent=1) + "\n")
        print(format_report(rep))
    (out / "training" / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_model_card(out, summary)
    return summary


def _write_sft_data(recipe: Recipe, chats: list[dict], path: Path) -> None:
    """The knowledge-base chats and the fresh-entity chats, interleaved in a seeded order."""
    import random

    from llmsys.train.organism_data import (
        fresh_knowledge_base,
        invented_words,
        make_knowledge_base,
        training_conversations,
    )

    kb = make_knowledge_base(recipe.seed)
    fresh_kb = fresh_knowledge_base(kb, recipe.fresh_entities, seed=recipe.seed + 7)
    rows = chats + training_conversations(fresh_kb, recipe.fresh_chats, seed=recipe.seed + 8,
                                          taken_words=invented_words(kb))
    random.Random(recipe.seed).shuffle(rows)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _seconds(stage_dir: Path) -> float:
    return json.loads((stage_dir / "history.json").read_text())["seconds"]


def _final(stage_dir: Path) -> dict:
    h = json.loads((stage_dir / "history.json").read_text())
    return {"steps": h["steps"][-1], "tokens": h["tokens"], "seconds": round(h["seconds"], 1),
            "first_loss": h["loss"][0], "final_loss": h["loss"][-1],
            "eval_loss": h["eval_loss"][-1] if h["eval_loss"] else None,
            "eval_bpb": h["eval_bpb"][-1] if h["eval_bpb"] else None}


def _export(work: Path, out: Path) -> None:
    """Copy the model, the knowledge base and the training records into `out`."""
    (out / "training").mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(work / "sft" / name, out / name)
    shutil.copyfile(work / "data" / "knowledge.jsonl", out / "knowledge.jsonl")
    for stage in ("pretrain", "sft"):
        shutil.copyfile(work / stage / "loss.png", out / "training" / f"loss_{stage}.png")
        shutil.copyfile(work / stage / "history.json", out / "training" / f"history_{stage}.json")


def evaluate_bundled(model_dir: Path, *, seed: int = 0, n_per_kind: int = 50,
                     device: str = "cpu", concurrency: int = 16, agent: bool = False) -> dict:
    """The held-out tasks (the ones `write_dataset(seed=seed)` writes) through `llmsys serve`
    on `model_dir`, asked directly or (`agent`) run by `llmsys.agent.Agent`."""
    from llmsys.serve.config import ServerConfig
    from llmsys.serve.server import BackgroundServer
    from llmsys.train.organism_data import eval_tasks, make_knowledge_base
    from llmsys.train.organism_eval import evaluate, evaluate_agent

    kb = make_knowledge_base(seed)
    tasks = eval_tasks(kb, n_per_kind, seed=seed + 2)
    config = ServerConfig(model=str(model_dir), port=0, served_model_name=BUNDLED_NAME,
                          device=device, dtype="float32")
    with BackgroundServer(config) as server:
        run = evaluate_agent if agent else evaluate
        return run(server.base_url, BUNDLED_NAME, tasks, kb, concurrency=concurrency)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the model goes")
    p.add_argument("--work", type=Path, default=Path("build/organism"),
                   help="intermediate files; stages found there are not redone")
    p.add_argument("--quick", action="store_true", help="toy sizes: checks the recipe")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    args = p.parse_args(argv)
    recipe = Recipe.quick() if args.quick else Recipe()
    build(recipe, args.work, args.out, device=args.device, evaluate_model=not args.no_eval)
    return 0



def write_model_card(out: Path, summary: dict) -> None:
    """README.md of the bundled model: data, size, recipe, times, scores."""
    from llmsys.train.organism_eval import format_report

    r, t, h = summary["recipe"], summary["times"], summary["histories"]
    config = json.loads((out / "config.json").read_text())
    n_params = _count_params(out)
    shape = r["shape"]
    scores = format_report(summary["eval"]) if "eval" in summary else "(not evaluated)"
    total_min = sum(t.get(k, 0.0) for k in ("data_s", "tokenizer_s", "pretrain_s", "sft_s")) / 60
    card = f"""# llmsys-tiny-chat

A {n_params / 1e6:.1f}M-parameter Llama-shaped chat model trained from scratch by llmsys's own
pipeline (`make organism`, `llmsys/train/organism.py`), the default model of `make run` and
`llmsys serve`. It is trained to greet, to answer arithmetic questions by calling a
`calculator` tool, to look facts up with a `search` tool over the knowledge base shipped next
to it (`knowledge.jsonl`), to chain the two, and to decline what no tool helps with; the
scores below say how well it does each on held-out questions. It knows nothing else: it is
a test organism, small enough to train on two CPU cores in about an hour.

## Model
- Llama architecture: {shape['num_layers']} layers, hidden {shape['hidden_size']}, \
{shape['num_heads']} heads ({shape['num_kv_heads']} key/value heads), SwiGLU \
{shape['intermediate_size']}, RoPE, RMSNorm, tied embeddings; vocabulary \
{config['vocab_size']}; context {r['seq_len']} tokens; float32 weights \
({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB).
- Tokenizer: byte-level BPE trained on the data below, one token per digit, a space before
  a capital letter as a token of its own (a name is the same tokens in a question, in a
  JSON tool call and in a search result, so the model copies it token for token); ChatML turns
  (`<|im_start|>role ... <|im_end|>`) with Hermes-style tool calls
  (`<tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>`), which the server's
  `tool_choice="auto"` parser turns into OpenAI `tool_calls`.

## Data (no downloads)
- General English: the docstrings of the Python standard library and the pydoc help topics
  (`llmsys/train/stdlib_corpus.py`).
- {r['num_train_chats']} synthetic conversations (`llmsys/train/organism_data.py`, seed
  {r['seed']}): greetings, calculator questions, fact look-ups, two-step tasks (search, then
  calculate) and requests to decline, over a knowledge base of invented cities, people and
  companies; 20% of its entities, a quarter of the question templates (fact questions are
  built from sentence frames and noun phrases, and whole frames are held out, so an
  evaluation question has a shape never trained on but no unseen word) and a quarter of the
  calculator operands are held out for evaluation. Training-only variety: two-step
  questions composed from a reference to the fact and an operation frame, 3% questions about
  names in no knowledge base (the search finds nothing and the answer says so), thanks or
  goodbye after an answer, greetings or thanks around questions.
- {r['fresh_chats']} more conversations for SFT about {r['fresh_entities']} entities made up for
  training only (their invented words share nothing with the knowledge base): trained on
  the knowledge base's entities alone, the model memorised them and searched for a known
  name whatever the question asked about (0% on held-out search tasks).
- {r['copy_drills']} copy drills ("Copy: 4821 Tarvel 93 / Copied: 4821 Tarvel 93") mixed into
  pretraining: without them (and with a peak learning rate of 3e-3) the model never learned
  to copy a number from the question into its tool call.

## Recipe
| stage | steps | batch | peak lr | target tokens | time | loss | eval loss | eval bits/byte |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{_stage_row(f"pretrain (stdlib text, {r['pretrain_chats']} chats, drills)", h['pretrain'],
            r['pretrain_batch'], r['pretrain_lr'])}
{_stage_row("SFT (assistant turns; all chats)", h['sft'], r['sft_batch'], r['sft_lr'])}

AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warmup then cosine decay to a
tenth of the peak, gradient clipping at 1.0, packed rows whose attention stays inside each
document. Whole recipe on `{summary['device']}`: {total_min:.0f} min (data \
{t.get('data_s', 0):.0f} s, tokenizer {t.get('tokenizer_s', 0):.0f} s; evaluation \
{summary.get('eval_s', 0):.0f} s more). Loss curves: `training/loss_pretrain.png`,
`training/loss_sft.png`; histories and the evaluation in `training/`.

## Scores (held-out tasks through `llmsys serve`, greedy, `tool_choice="auto"`)
{scores}

Reproduce: `make organism` (or `python -m llmsys.train.organism`); evaluate again with
`llmsys eval organism --model models/llmsys-tiny-chat`.
"""
    (out / "README.md").write_text(card)


def _stage_row(label: str, h: dict, batch: int, lr: float) -> str:
    return (f"| {label} | {h['steps']} | {batch} | {lr} | {h['tokens']:,} | "
            f"{h['seconds'] / 60:.1f} min | {h['final_loss']:.3f} | {_fmt(h['eval_loss'])} | "
            f"{_fmt(h['eval_bpb'])} |")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _count_params(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


if __name__ == "__main__":
    raise SystemExit(main())
