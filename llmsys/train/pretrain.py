"""Pretraining a Llama-shaped model from scratch on text files or JSONL.

    llmsys train pretrain --data corpus.jsonl --tokenizer DIR --out DIR [--hidden-size 256 ...]

`pretrain(...)` tokenizes the documents (each ends with the end-of-text token), holds out
the last `eval_fraction` of them for the eval loss and bits per byte, packs the rest into
rows of `seq_len` tokens, builds the model from `ModelShape` (a Llama config with tied
embeddings), initializes it from the seed and runs `trainer.train`. The output directory is
a complete checkpoint (config.json, model.safetensors, tokenizer files) that `LLM(...)`
loads, plus trainer_state.pt for `resume=True`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llmsys.model.config import ModelConfig
from llmsys.model.tokenizer import Tokenizer
from llmsys.model.transformer import Transformer
from llmsys.train.data import Row, pack, read_texts, text_example, token_byte_lengths
from llmsys.train.trainer import History, TrainConfig, init_weights, train


@dataclass
class ModelShape:
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads "
                             f"{self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                             f"{self.num_kv_heads}")

    def hf_config(self, tokenizer: Tokenizer) -> dict:
        """config.json of a Llama model of this shape for `tokenizer`."""
        return {
            "model_type": "llama", "vocab_size": tokenizer.vocab_size,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_position_embeddings, "rms_norm_eps": 1e-5,
            "rope_theta": self.rope_theta, "hidden_act": "silu", "tie_word_embeddings": True,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_ids[0],
            "pad_token_id": tokenizer.pad_token_id, "dtype": "float32",
        }


def text_rows(texts: list[str], tokenizer: Tokenizer, seq_len: int) -> list[Row]:
    """Documents → packed rows; every token (and the end-of-text after each) is a target."""
    end = tokenizer.pad_token_id  # <|endoftext|>
    encodings = tokenizer.backend.encode_batch(texts, add_special_tokens=False)
    return pack([text_example(e.ids, end) for e in encodings], seq_len, tokenizer.pad_token_id)


def split_eval(items: list, eval_fraction: float) -> tuple[list, list]:
    """(train, eval): the last `eval_fraction` of the items (at least one) are held out."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = max(1, round(len(items) * eval_fraction)) if eval_fraction > 0 else 0
    if n_eval >= len(items):
        raise ValueError(f"{len(items)} document(s) are too few to hold out {eval_fraction:.0%}")
    return items[:len(items) - n_eval], items[len(items) - n_eval:]


def write_generation_config(tokenizer: Tokenizer, out: Path) -> None:
    config = {"eos_token_id": tokenizer.eos_token_ids, "pad_token_id": tokenizer.pad_token_id}
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")


def pretrain(data: list[str | os.PathLike], tokenizer_dir: str | os.PathLike,
             cfg: TrainConfig, *, shape: ModelShape | None = None, seq_len: int = 512,
             eval_fraction: float = 0.02, max_eval_rows: int = 64,
             resume: bool = False) -> History:
    shape = shape or ModelShape()
    if seq_len > shape.max_position_embeddings:
        raise ValueError(f"seq_len {seq_len} exceeds max_position_embeddings "
                         f"{shape.max_position_embeddings}")
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    texts = [t for t in read_texts(data) if t.strip()]
    train_texts, eval_texts = split_eval(texts, eval_fraction)
    rows, eval_rows = text_rows(train_texts, tokenizer, seq_len), []
    if eval_texts:
        eval_rows = text_rows(eval_texts, tokenizer, seq_len)[:max_eval_rows]
    hf_config = shape.hf_config(tokenizer)
    torch.manual_seed(cfg.seed)
    model = Transformer(ModelConfig.from_hf(hf_config))
    init_weights(model, cfg.seed)
    write_generation_config(tokenizer, Path(cfg.out_dir))
    n_params = sum(p.numel() for p in model.parameters())
    n_tokens = sum(sum(label != -100 for label in r.labels) for r in rows)
    print(f"pretrain: {n_params / 1e6:.2f}M parameters, {len(rows)} rows of {seq_len} "
          f"({n_tokens} target tokens), {len(eval_rows)} eval rows")
    return train(model, hf_config, rows, eval_rows, cfg, token_bytes=token_byte_lengths(tokenizer),
                 tokenizer_dir=tokenizer_dir, resume=resume)
