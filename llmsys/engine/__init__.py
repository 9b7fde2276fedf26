"""The inference engine: scheduler -> model runner -> sampler over a paged KV cache.

`LLMEngine` (llm_engine.py) is the loop; `Scheduler`, `BlockManager`, `ModelRunner` each own
one verb (choose, allocate, run); `sampler.py` and `output_text.py` turn logits into tokens
and tokens into text.
"""
