"""Model configuration: one small dataclass read from a Hugging Face `config.json`.

`ModelConfig.from_hf(d)` understands both the long-standing layout (`rope_scaling` plus a
top-level `rope_theta`) and the `rope_parameters` layout that transformers 5 writes, for the
families llama, mistral, qwen2, qwen3, mixtral and qwen3_moe. Per-layer facts (sliding window,
dense or MoE MLP) are resolved here so the modules never look at the family name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmsys.errors import CheckpointError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")

# Defaults that differ between families when a key is absent from config.json (HF's defaults).
_DEFAULT_EPS = {"mixtral": 1e-5}
_DEFAULT_THETA = {"mixtral": 1e6}


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters; `type` is one of ROPE_TYPES."""

    type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    attention_factor: float | None = None  # yarn
    truncate: bool = True  # yarn

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            raise CheckpointError(f"unsupported rope type {self.type!r}; allowed: {ROPE_TYPES}")
        if self.theta <= 0:
            raise CheckpointError(f"rope_theta must be > 0, got {self.theta}")
        if self.type != "default" and self.factor <= 0:
            raise CheckpointError(f"rope factor must be > 0, got {self.factor}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything the transformer modules need; built by `from_hf` or by hand in tests."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # Per layer: the sliding-window length (keys within the last `w` positions), or None.
    sliding_windows: tuple[int | None, ...] = ()
    # Mixture of experts; `moe_layers[i]` says whether layer i uses the MoE block.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[bool, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise CheckpointError(f"unsupported model_type {self.family!r}; allowed: {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise CheckpointError(
                f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.num_layers)
        if not self.moe_layers:
            object.__setattr__(self, "moe_layers", (self.num_experts > 0,) * self.num_layers)
        if len(self.sliding_windows) != self.num_layers or len(self.moe_layers) != self.num_layers:
            raise CheckpointError("sliding_windows and moe_layers need one entry per layer")
        if any(w is not None and w <= 0 for w in self.sliding_windows):
            raise CheckpointError(f"sliding_window must be > 0, got {self.sliding_windows}")
        if any(self.moe_layers) and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise CheckpointError(
                f"num_experts_per_tok must be in [1, num_experts={self.num_experts}], "
                f"got {self.num_experts_per_tok}")

    @property
    def context_length(self) -> int:
        """The longest sequence the model is meant for: max_position_embeddings, stretched by
        the rope factor for linear, dynamic and yarn scaling (vLLM's rule)."""
        rope = self.rope
        if rope.type in ("linear", "dynamic"):
            return int(self.max_position_embeddings * rope.factor)
        if rope.type == "yarn":
            base = rope.original_max_position_embeddings or self.max_position_embeddings
            return max(int(base * rope.factor), self.max_position_embeddings)
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face config.json dict (either rope layout)."""
        family = d.get("model_type")
        if family not in FAMILIES:
            raise CheckpointError(f"unsupported model_type {family!r}; allowed: {FAMILIES}")
        try:
            return cls(**_common_fields(d, family), **_family_fields(d, family))
        except KeyError as e:
            raise CheckpointError(f"config.json has no {e.args[0]!r}, needed for {family}") from e
        except TypeError as e:
            raise CheckpointError(f"config.json has a value of the wrong type: {e}") from e


def _common_fields(d: dict[str, Any], family: str) -> dict[str, Any]:
    num_heads = d["num_attention_heads"]
    num_layers = d["num_hidden_layers"]
    eos = d.get("eos_token_id")
    return dict(
        family=family,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=d.get("num_key_value_heads") or num_heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // num_heads,
        max_position_embeddings=d.get("max_position_embeddings", 4096),
        rms_norm_eps=d.get("rms_norm_eps", _DEFAULT_EPS.get(family, 1e-6)),
        rope=_rope_config(d, family),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        sliding_windows=_sliding_windows(d, family, num_layers),
    )


def _family_fields(d: dict[str, Any], family: str) -> dict[str, Any]:
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act {d['hidden_act']!r} is not supported; allowed: 'silu'")
    attention_bias = bool(d.get("attention_bias", False))
    out: dict[str, Any] = dict(qkv_bias=attention_bias, o_bias=attention_bias)
    if family == "llama":
        out["mlp_bias"] = bool(d.get("mlp_bias", False))
    if family == "qwen2":
        out.update(qkv_bias=True, o_bias=False)
    if family in ("qwen3", "qwen3_moe"):
        out["qk_norm"] = True
    if family == "mixtral":
        n = d.get("num_local_experts", 8)
        out.update(num_experts=n, num_experts_per_tok=d.get("num_experts_per_tok", 2),
                   moe_intermediate_size=d["intermediate_size"], norm_topk_prob=True)
    if family == "qwen3_moe":
        n = d.get("num_experts", d.get("num_local_experts", 128))
        step = d.get("decoder_sparse_step", 1)
        dense = set(d.get("mlp_only_layers") or [])
        out.update(
            num_experts=n, num_experts_per_tok=d.get("num_experts_per_tok", 8),
            moe_intermediate_size=d.get("moe_intermediate_size", 768),
            norm_topk_prob=bool(d.get("norm_topk_prob", False)),
            moe_layers=tuple(i not in dense and n > 0 and (i + 1) % step == 0
                             for i in range(d["num_hidden_layers"])))
    return out


def _sliding_windows(d: dict[str, Any], family: str, num_layers: int) -> tuple[int | None, ...]:
    """Per-layer window as HF resolves it for each family."""
    window = d.get("sliding_window")
    if family in ("qwen2", "qwen3", "qwen3_moe") and not d.get("use_sliding_window", False):
        window = None
    if window is None:
        return (None,) * num_layers
    layer_types = d.get("layer_types")
    if layer_types is None and family in ("qwen2", "qwen3"):
        first = d.get("max_window_layers", 28)
        layer_types = ["sliding_attention" if i >= first else "full" for i in range(num_layers)]
    if layer_types is None:
        return (window,) * num_layers
    return tuple(window if t == "sliding_attention" else None for t in layer_types)


def _rope_config(d: dict[str, Any], family: str) -> RopeConfig:
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", d.get("rope_theta", _DEFAULT_THETA.get(family, 10000.0)))
    orig = params.get("original_max_position_embeddings")
    if rope_type in ("yarn", "llama3"):
        orig = d.get("original_max_position_embeddings", orig) or d.get("max_position_embeddings")
    factor = params.get("factor")
    if factor is None:  # yarn may leave it out and use the ratio of context lengths
        factor = d.get("max_position_embeddings", 1) / orig if rope_type == "yarn" else 1.0
    if "partial_rotary_factor" in params and params["partial_rotary_factor"] != 1.0:
        raise CheckpointError("partial_rotary_factor != 1 is not supported")
    return RopeConfig(
        type=rope_type, theta=float(theta), factor=float(factor),
        original_max_position_embeddings=orig,
        low_freq_factor=params.get("low_freq_factor", 1.0),
        high_freq_factor=params.get("high_freq_factor", 4.0),
        beta_fast=params.get("beta_fast") or 32.0,
        beta_slow=params.get("beta_slow") or 1.0,
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        attention_factor=params.get("attention_factor"),
        truncate=params.get("truncate", True),
    )
