"""The inference engine: sampling (and, later, scheduling and the paged KV cache)."""
