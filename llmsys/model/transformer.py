"""The decoder-only transformer shared by every supported family.

    logits = Transformer(cfg)(input_ids, positions, kv_cache)

`forward` takes token ids and their positions, both (B, T), and returns logits
(B, T, vocab). `hidden_states` and `logits` are the two halves, for callers that only
need the last position's logits. Family differences live in `ModelConfig`; features
such as quantization or LoRA are applied from outside by swapping modules.
"""

from __future__ import annotations

import torch
from torch import nn

from llmsys.model.config import ModelConfig
from llmsys.model.layers import MLP, Attention, KVCache, RMSNorm
from llmsys.model.moe import SparseMoE
from llmsys.model.rope import RotaryEmbedding


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.moe_layers[layer]:
            self.mlp: nn.Module = SparseMoE(cfg)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, cos, sin, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor,
                      kv_cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) ids and positions -> (B, T, hidden) final-norm hidden states."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, positions, cos, sin, kv_cache)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        return self.logits(self.hidden_states(input_ids, positions, kv_cache))
