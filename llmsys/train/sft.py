"""Supervised fine-tuning on chat JSONL (OpenAI messages, with tool calls and tool results).

    llmsys train sft --data chats.jsonl --model DIR --out DIR [--label-smoothing 0.1 ...]

Each line is `{"messages": [...], "tools": [...]}` (tools optional). A chat is rendered with
the model's own chat template; the loss is taken on the assistant's tokens only (content,
tool calls, end of turn) — system, user and tool-result tokens and padding are masked with
the ignore index. Chats are packed into rows whose attention never crosses a conversation
boundary (`data.DocumentMask`). The last `eval_fraction` of chats give the eval loss.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from llmsys.model.checkpoint import load_model, read_json
from llmsys.model.tokenizer import Tokenizer
from llmsys.train.data import Row, chat_example, pack, read_chats, token_byte_lengths
from llmsys.train.pretrain import split_eval, write_generation_config
from llmsys.train.trainer import History, TrainConfig, train


def chat_rows(chats: list[dict], tokenizer: Tokenizer, seq_len: int) -> list[Row]:
    examples = [chat_example(tokenizer, c["messages"], c.get("tools")) for c in chats]
    too_long = sum(len(e.ids) > seq_len for e in examples)
    if too_long:
        print(f"sft: {too_long} chat(s) longer than {seq_len} tokens are cut into pieces")
    return pack(examples, seq_len, tokenizer.pad_token_id)


def sft(data: str | os.PathLike, model_dir: str | os.PathLike, cfg: TrainConfig, *,
        seq_len: int | None = None, eval_fraction: float = 0.02, max_eval_rows: int = 64,
        resume: bool = False) -> History:
    tokenizer = Tokenizer.from_dir(model_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir} has no chat template; SFT renders chats with it")
    model, config = load_model(model_dir, dtype=torch.float32)
    hf_config = read_json(Path(model_dir) / "config.json")
    hf_config.pop("architectures", None)
    seq_len = seq_len or config.max_position_embeddings
    train_chats, eval_chats = split_eval(list(read_chats(data)), eval_fraction)
    rows = chat_rows(train_chats, tokenizer, seq_len)
    eval_rows = chat_rows(eval_chats, tokenizer, seq_len)[:max_eval_rows] if eval_chats else []
    write_generation_config(tokenizer, Path(cfg.out_dir))
    print(f"sft: {len(train_chats)} chats in {len(rows)} rows of {seq_len}, "
          f"{len(eval_chats)} held out")
    return train(model, hf_config, rows, eval_rows, cfg, token_bytes=token_byte_lengths(tokenizer),
                 tokenizer_dir=model_dir, resume=resume)
