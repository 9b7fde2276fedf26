"""llama.cpp (through llama-cpp-python) on the decode benchmark's checkpoint.

    python benchmarks/llamacpp_decode.py --check [--dtypes float32 bfloat16]
    python benchmarks/llamacpp_decode.py [--tokens 128] [--threads 2] [--dtypes float32 bfloat16]

`write_gguf` converts a Hugging Face Llama checkpoint directory (config.json + safetensors, as
`make_tiny_checkpoint` writes it) into a GGUF file with F32 or BF16 matrices (norms stay F32) and
no tokenizer (llama.cpp's vocab type "none"; only token ids are fed). `llama_cpp_decode` times
single-stream greedy decoding on it with the low-level API, reporting 1 / median step time like
`llmsys_decode` in benchmarks/decode.py. `check_logits` compares llama.cpp's logits with
transformers' on the same checkpoint: `--check` runs it on a small random checkpoint, and without
it the file prints decode tokens/s on the ~134M-parameter benchmark shape. Needs the `gguf` and
`llama-cpp-python` packages (imported lazily, so this file imports without them);
`benchmarks/decode.py` runs it next to llmsys and transformers where they are installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import gguf

PROMPT = list(range(16))  # the prompt decode.py gives llmsys
CHECK_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=512)


def llama_cpp_available() -> str | None:
    """None if llama.cpp can be run here, else a one-line reason why not."""
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        return f"gguf is not installed ({exc}); pip install gguf"
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError) as exc:
        return f"llama-cpp-python is not usable ({exc}); pip install llama-cpp-python"
    return None


# ---- HF checkpoint -> GGUF ----------------------------------------------------------------

def _load_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in sorted(checkpoint_dir.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise NotImplementedError(f"rope type {rope_type!r} is not converted")
    return float(config.get("rope_theta", params.get("rope_theta", 10000.0)))


def _interleave_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's q/k output rows from HF's rotate-half RoPE layout (pairs i and
    i + d/2) to the adjacent-pair layout (2i, 2i + 1) that llama.cpp's llama architecture uses."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).transpose(1, 2).reshape(weight.shape)


def _gguf_tensors(state: dict[str, torch.Tensor], config: dict
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) pairs for the llama architecture, q/k rows permuted."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if not config.get("tie_word_embeddings", False):
        yield "output.weight", state["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config["num_hidden_layers"]):
        for hf, ours in names.items():
            tensor = state[f"model.layers.{layer}.{hf}.weight"]
            if ours == "attn_q":
                tensor = _interleave_rope_rows(tensor, heads)
            elif ours == "attn_k":
                tensor = _interleave_rope_rows(tensor, kv_heads)
            yield f"blk.{layer}.{ours}.weight", tensor


def _write_metadata(writer: gguf.GGUFWriter, config: dict, dtype: str) -> None:
    import gguf

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_tokenizer_model("none")  # no vocab: llama.cpp adds vocab_size dummy tokens
    file_type = {"float32": gguf.LlamaFileType.ALL_F32, "bfloat16": gguf.LlamaFileType.MOSTLY_BF16}
    writer.add_file_type(file_type[dtype])


def write_gguf(checkpoint_dir: Path, out_path: Path, dtype: str) -> Path:
    """Convert the HF Llama checkpoint in `checkpoint_dir` into a GGUF file at `out_path` with
    `dtype` ("float32" or "bfloat16") matrices; 1-D tensors (the norms) are always F32."""
    import gguf

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"only llama checkpoints are converted, not {config.get('model_type')!r}")
    writer = gguf.GGUFWriter(str(out_path), "llama")
    _write_metadata(writer, config, dtype)
    for name, tensor in _gguf_tensors(_load_state_dict(checkpoint_dir), config):
        if dtype == "bfloat16" and tensor.dim() > 1:
            bits = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
            writer.add_tensor(name, bits.view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(name, tensor.to(torch.float32).contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


# ---- running llama.cpp --------------------------------------------------------------------

class _Runner:
    """One llama.cpp model + context (low-level API) fed token ids one batch at a time."""

    def __init__(self, gguf_path: Path, threads: int, n_ctx: int, exact: bool = False) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # silence load logs
        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_mmap = False  # weights read into memory up front, not paged in
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        if exact:  # F32 KV cache (default F16), no flash attention (it rounds Q to F16 on CPU)
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self.pos = 0

    def eval(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the sequence; logits (float32, [rows, vocab]) for every position
        fed if `all_logits`, else for the last one only."""
        batch = self.batch
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i] = token, self.pos + i
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
            batch.logits[i] = all_logits or i == len(ids) - 1
        if self.lib.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        self.pos += len(ids)
        rows = range(len(ids)) if all_logits else [len(ids) - 1]
        return np.stack([self._logits(i) for i in rows])

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def reset(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self.pos = 0

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def llama_cpp_decode(gguf_path: Path, tokens: int, threads: int) -> float:
    """Greedy single-stream decode tokens/s: after a warm-up, the 16-token prompt 0..15, then
    `tokens` steps of (eval one token, argmax); 1 / median step time."""
    runner = _Runner(gguf_path, threads, n_ctx=max(256, len(PROMPT) + tokens + 16))
    try:
        next_id = int(runner.eval(PROMPT)[-1].argmax())
        for _ in range(4):  # warm-up
            next_id = int(runner.eval([next_id])[-1].argmax())
        runner.reset()
        next_id = int(runner.eval(PROMPT)[-1].argmax())
        gaps = []
        for _ in range(tokens):
            start = time.perf_counter()
            next_id = int(runner.eval([next_id])[-1].argmax())
            gaps.append(time.perf_counter() - start)
    finally:
        runner.close()
    return 1 / statistics.median(gaps)


@torch.inference_mode()
def _logits_pair(checkpoint_dir: Path, gguf_path: Path, ids: list[int] | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    import transformers

    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    ids = ids or [(7 * i + 3) % config["vocab_size"] for i in range(12)]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint_dir, dtype=torch.float32).eval()
    expected = model(torch.tensor([ids])).logits[0].float().numpy()
    runner = _Runner(gguf_path, threads=1, n_ctx=max(64, len(ids)), exact=True)
    try:
        return runner.eval(ids, all_logits=True), expected
    finally:
        runner.close()


def check_logits(checkpoint_dir: Path, gguf_path: Path, ids: list[int] | None = None) -> float:
    """Max |llama.cpp logits - transformers logits| over all positions of a prompt (default:
    12 fixed token ids), transformers in float32 and llama.cpp with an F32 KV cache and without
    flash attention (which rounds to F16 on CPU and would leave ~1e-3 differences)."""
    got, expected = _logits_pair(checkpoint_dir, gguf_path, ids)
    return float(np.abs(got - expected).max())


# ---- standalone -----------------------------------------------------------------------------

def _check(dtypes: list[str], tmp: Path) -> None:
    from llmsys.testing import make_tiny_checkpoint

    for tied in (False, True):
        for dtype in dtypes:
            name = f"check-{dtype}-{'tied' if tied else 'untied'}"
            path = make_tiny_checkpoint("llama", tmp / name, dtype=dtype,
                                        tie_word_embeddings=tied, **CHECK_SHAPE)
            got, expected = _logits_pair(path, write_gguf(path, tmp / f"{name}.gguf", dtype), None)
            diff, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
            # bfloat16: llama.cpp also rounds activations to bf16 before each matmul
            limit = (1e-5 if dtype == "float32" else 1e-2) * scale
            verdict = "ok" if diff < limit else "FAILED"
            print(f"[{name}] max |logit diff| vs transformers {diff:.2e}, max |logit| "
                  f"{scale:.1f} (limit {limit:.1e}: {verdict})", flush=True)
            if diff >= limit:
                raise SystemExit(1)


def _decode(dtypes: list[str], tokens: int, threads: int, tmp: Path) -> None:
    from llmsys.testing import LLAMA_110M, make_tiny_checkpoint

    shape = {**LLAMA_110M, "vocab_size": 32000}  # the shape benchmarks/decode.py uses
    for dtype in dtypes:
        path = make_tiny_checkpoint("llama", tmp / dtype, dtype=dtype, **shape)
        gguf_path = write_gguf(path, tmp / f"{dtype}.gguf", dtype)
        tok_s = llama_cpp_decode(gguf_path, tokens, threads)
        print(f"[{dtype}] llama.cpp {tok_s:.1f} tok/s ({threads} threads)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare logits with transformers")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    if (reason := llama_cpp_available()) is not None:
        raise SystemExit(f"llama.cpp unavailable: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.check:
            _check(args.dtypes, Path(tmp))
        else:
            _decode(args.dtypes, args.tokens, args.threads, Path(tmp))


if __name__ == "__main__":
    main()
