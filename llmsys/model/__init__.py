"""Transformer core: config, layers, rotary embeddings, MoE, checkpoint and tokenizer loading."""
