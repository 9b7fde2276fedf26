"""Load and save Hugging Face checkpoint directories.

    model, cfg = load_model("path/to/dir", dtype=torch.bfloat16, device="cpu")
    save_checkpoint(model, hf_config_dict, "path/to/out")

A directory holds `config.json`, `model.safetensors` (or shards listed in
`model.safetensors.index.json`) and optionally `generation_config.json`. The model is built
on the meta device, materialised once in the target dtype and device, and then filled one
tensor at a time straight from the memory-mapped files, so the weights are never held twice.

`hf_tensor_map` is the one place that knows how HF tensor names relate to this package's
(fused) parameters; loading and saving both use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llmsys.errors import CheckpointError
from llmsys.model.config import ModelConfig
from llmsys.model.transformer import Transformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
}
# (our parameter name, index into it) for each HF tensor name.
TensorMap = dict[str, tuple[str, tuple]]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def checkpoint_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist "
                              "(expected a folder with config.json and *.safetensors)")
    return p


def load_config(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(parsed config, the raw config.json dict)."""
    raw = read_json(checkpoint_dir(path) / "config.json")
    return ModelConfig.from_hf(raw), raw


def resolve_dtype(dtype: str | torch.dtype, raw_config: dict[str, Any]) -> torch.dtype:
    """'auto' takes the checkpoint's own dtype (float32 when it names none)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported; allowed: {list(DTYPES)}")
        return dtype
    if dtype == "auto":
        dtype = raw_config.get("dtype") or raw_config.get("torch_dtype") or "float32"
        return DTYPES.get(dtype, torch.float32)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: 'auto', {list(DTYPES)}")
    return DTYPES[dtype]


def hf_tensor_map(cfg: ModelConfig) -> TensorMap:
    """HF tensor name -> (parameter name in Transformer, index into that parameter)."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    m: TensorMap = {"model.embed_tokens.weight": ("embed_tokens.weight", ()),
                    "model.norm.weight": ("norm.weight", ())}
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = ("lm_head.weight", ())
    for i in range(cfg.num_layers):
        hf, our = f"model.layers.{i}.", f"layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            m[f"{hf}{norm}.weight"] = (f"{our}{norm}.weight", ())
        attn_params = ["weight"] + (["bias"] if cfg.qkv_bias else [])
        for p in attn_params:
            qkv = f"{our}self_attn.qkv_proj.{p}"
            m[f"{hf}self_attn.q_proj.{p}"] = (qkv, (slice(0, q),))
            m[f"{hf}self_attn.k_proj.{p}"] = (qkv, (slice(q, q + kv),))
            m[f"{hf}self_attn.v_proj.{p}"] = (qkv, (slice(q + kv, q + 2 * kv),))
        for p in ["weight"] + (["bias"] if cfg.o_bias else []):
            m[f"{hf}self_attn.o_proj.{p}"] = (f"{our}self_attn.o_proj.{p}", ())
        if cfg.qk_norm:
            m[f"{hf}self_attn.q_norm.weight"] = (f"{our}self_attn.q_norm.weight", ())
            m[f"{hf}self_attn.k_norm.weight"] = (f"{our}self_attn.k_norm.weight", ())
        if cfg.moe_layers[i]:
            m.update(_moe_map(cfg, hf, our))
        else:
            inter = cfg.intermediate_size
            for p in ["weight"] + (["bias"] if cfg.mlp_bias else []):
                gate_up = f"{our}mlp.gate_up_proj.{p}"
                m[f"{hf}mlp.gate_proj.{p}"] = (gate_up, (slice(0, inter),))
                m[f"{hf}mlp.up_proj.{p}"] = (gate_up, (slice(inter, 2 * inter),))
                m[f"{hf}mlp.down_proj.{p}"] = (f"{our}mlp.down_proj.{p}", ())
    return m


def _moe_map(cfg: ModelConfig, hf: str, our: str) -> TensorMap:
    inter = cfg.moe_intermediate_size
    if cfg.family == "mixtral":
        block, gate, up, down = "block_sparse_moe", "w1", "w3", "w2"
    else:
        block, gate, up, down = "mlp", "gate_proj", "up_proj", "down_proj"
    m: TensorMap = {f"{hf}{block}.gate.weight": (f"{our}mlp.gate.weight", ())}
    for e in range(cfg.num_experts):
        ex = f"{hf}{block}.experts.{e}."
        m[f"{ex}{gate}.weight"] = (f"{our}mlp.gate_up_proj", (e, slice(0, inter)))
        m[f"{ex}{up}.weight"] = (f"{our}mlp.gate_up_proj", (e, slice(inter, 2 * inter)))
        m[f"{ex}{down}.weight"] = (f"{our}mlp.down_proj", (e,))
    return m


def _safetensors_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        files = [d / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that do not exist: {missing}")
        return files
    single = d / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{d} has neither model.safetensors nor model.safetensors.index.json")
    return [single]


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
              "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class SafetensorsReader:
    """Reads tensors of a .safetensors file straight into destination tensors.

    No memory map: each tensor is read with one `readinto`, into the destination itself when
    dtype and layout allow, otherwise into a buffer of that one tensor. The header is checked
    (dtypes, shapes, offsets inside the file) so a truncated or corrupt file fails clearly."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = open(path, "rb")  # noqa: SIM115 (closed in close())
            size = os.fstat(self.file.fileno()).st_size
            n = int.from_bytes(self.file.read(8), "little")
            if not 2 <= n <= size - 8:
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(self.file.read(n))
            header.pop("__metadata__", None)
            self.data_start = 8 + n
            self.entries = {name: self._check(name, e, size - 8 - n) for name, e in header.items()}
        except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
            self.close()
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e

    @staticmethod
    def _check(name: str, entry: dict, data_size: int) -> tuple[torch.dtype, tuple, int, int]:
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
        expected = torch.Size(shape).numel() * dtype.itemsize
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise ValueError(f"tensor {name!r}: offsets {begin}..{end} do not hold {shape} "
                             f"{entry['dtype']} within the {data_size} data bytes")
        return dtype, shape, begin, end

    def shape(self, name: str) -> tuple:
        return self.entries[name][1]

    def read_into(self, name: str, target: torch.Tensor) -> None:
        dtype, shape, begin, end = self.entries[name]
        direct = (target.device.type == "cpu" and target.dtype == dtype
                  and target.is_contiguous())
        buf = target if direct else torch.empty(shape, dtype=dtype)
        self.file.seek(self.data_start + begin)
        if end > begin:
            view = memoryview(buf.view(-1).view(torch.uint8).numpy())
            if self.file.readinto(view) != end - begin:
                raise CheckpointError(f"{self.path} is truncated inside tensor {name!r}")
        if not direct:
            target.copy_(buf)

    def close(self) -> None:
        if getattr(self, "file", None):
            self.file.close()


def load_model(path: str | os.PathLike, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "cpu") -> tuple[Transformer, ModelConfig]:
    """Build the model for the checkpoint at `path` and fill it with its weights."""
    cfg, raw = load_config(path)
    torch_dtype = resolve_dtype(dtype, raw)
    files = _safetensors_files(Path(path))
    # 1. Build on the meta device (no memory), then allocate once in the target dtype/device.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device("meta"):
            model = Transformer(cfg)
    finally:
        torch.set_default_dtype(default_dtype)
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # 2. Copy each tensor into its (slice of a) parameter, checking shapes.
    params = dict(model.named_parameters())
    tensor_map = hf_tensor_map(cfg)
    seen: set[str] = set()
    with torch.no_grad():
        for file in files:
            reader = SafetensorsReader(file)
            try:
                for name in reader.entries:
                    if _load_tensor(reader, name, params, tensor_map, cfg):
                        seen.add(name)
            finally:
                reader.close()
    # 3. Every parameter must have been filled.
    missing = sorted(set(tensor_map) - seen)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint {path} is missing tensor(s) {missing[:5]}{more}")
    return model.eval(), cfg


def _load_tensor(reader: SafetensorsReader, name: str, params: dict[str, torch.Tensor],
                 tensor_map: TensorMap, cfg: ModelConfig) -> bool:
    """Copy one file tensor into its parameter; False if it is one to skip."""
    if name not in tensor_map:
        if name.endswith("rotary_emb.inv_freq") or (
                name == "lm_head.weight" and cfg.tie_word_embeddings):
            return False
        raise CheckpointError(f"unexpected tensor {name!r} in {reader.path}: not part of a "
                              f"{cfg.family} model with this config.json")
    param_name, index = tensor_map[name]
    target = params[param_name][index]
    if tuple(target.shape) != reader.shape(name):
        raise CheckpointError(f"tensor {name!r} has shape {reader.shape(name)} but config.json "
                              f"implies {tuple(target.shape)}")
    reader.read_into(name, target)
    return True


def hf_state_dict(model: Transformer) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under HF names, unfused (views, no copies)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for hf_name, (param_name, index) in hf_tensor_map(model.config).items():
        yield hf_name, params[param_name][index]


def save_checkpoint(model: Transformer, hf_config: dict[str, Any], path: str | os.PathLike,
                    max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors (sharded with an index past `max_shard_bytes`)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [_ARCHITECTURES[model.config.family]], **hf_config}
    config.setdefault("dtype", str(model.embed_tokens.weight.dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in hf_state_dict(model):
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes and size + nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().to("cpu", copy=True).contiguous()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards
                                            for t in s.values())}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
