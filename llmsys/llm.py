"""`LLM`: the offline API, shaped like vLLM's.

    from llmsys import LLM, SamplingParams
    llm = LLM("path/to/checkpoint", dtype="float32")
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(temperature=0, max_tokens=16))
    print(outs[0].text, outs[0].token_ids, outs[0].finish_reason)

Everything runs through `LLMEngine` (continuous batching over a paged KV cache); the
engine settings are keyword arguments with vLLM's names.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmsys.engine.llm_engine import EngineConfig, LLMEngine, Prompt
from llmsys.kernels.cpu_modules import use_cpu_kernels
from llmsys.model.checkpoint import load_model, read_json
from llmsys.model.tokenizer import Tokenizer
from llmsys.outputs import RequestOutput
from llmsys.sampling_params import SamplingParams


@dataclass
class StreamEvent:
    """One generated token: its id, the text it made visible, and (at the end) the reason."""

    token_id: int
    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last token
    stop_reason: int | str | None = None  # the stop token id or string that ended it


class LLM:
    def __init__(self, model: str | os.PathLike, dtype: str | torch.dtype = "auto",
                 device: str | torch.device = "cpu", max_model_len: int | None = None,
                 block_size: int = 16, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
                 kv_cache_memory_bytes: int | None = None, num_kv_blocks: int | None = None):
        config = EngineConfig(
            block_size=block_size, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching, max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_memory_bytes, num_kv_blocks=num_kv_blocks)
        self.model, self.config = load_model(model, dtype=dtype, device=device)
        self.device = torch.device(device)
        use_cpu_kernels(self.model)  # CPU decode kernels; a no-op on other devices
        self.tokenizer = Tokenizer.from_dir(model)
        gen_path = Path(model) / "generation_config.json"
        self.generation_config = read_json(gen_path) if gen_path.exists() else {}
        # The tokenizer's EOS ids already include generation_config.json's.
        eos = set(self.tokenizer.eos_token_ids) | set(self.config.eos_token_ids)
        self.engine = LLMEngine(self.model, self.tokenizer, config, eos)
        self._ids = itertools.count()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def eos_token_ids(self) -> set[int]:
        return self.engine.eos_token_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids: set[int]) -> None:
        self.engine.eos_token_ids = ids

    # ---- public API -------------------------------------------------------------------

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Run all prompts to completion (batched continuously); outputs in input order.
        `sampling_params` may be one for all prompts or a list with one per prompt."""
        batch = self._as_prompt_list(prompts)
        params = sampling_params or self.default_sampling_params()
        params = list(params) if isinstance(params, Sequence) else [params] * len(batch)
        if len(params) != len(batch):
            raise ValueError(f"got {len(params)} sampling params for {len(batch)} prompts")
        prepared = [self.engine.prepare_prompt(p) for p in batch]  # validate all first
        ids = [f"gen-{next(self._ids)}" for _ in batch]
        try:
            for rid, (text, tokens), p in zip(ids, prepared, params):
                self.engine.add_request(rid, {"prompt": text, "prompt_token_ids": tokens}, p)
            return self._run_to_completion(ids, use_tqdm)
        finally:
            for rid in ids:  # nothing lingers after an error or a Ctrl-C
                self.engine.abort(rid)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | None = None, *,
             tools: list[dict] | None = None, add_generation_prompt: bool = True,
             chat_template_kwargs: dict | None = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        """One conversation (a list of messages) or several; rendered with the chat template."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.render_chat(c, tools=tools, add_generation_prompt=add_generation_prompt,
                                    chat_template_kwargs=chat_template_kwargs)
                   for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None,
                    add_generation_prompt: bool = True,
                    chat_template_kwargs: dict | None = None) -> dict[str, Any]:
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt,
            template_vars=chat_template_kwargs)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return {"prompt": text, "prompt_token_ids": ids}

    def stream(self, prompt: Prompt, sampling_params: SamplingParams) -> Iterator[StreamEvent]:
        """Yield the tokens of one completion as they are generated."""
        if sampling_params.n != 1:
            raise ValueError(f"stream() takes n=1, got n={sampling_params.n}")
        rid = f"stream-{next(self._ids)}"
        self.engine.add_request(rid, prompt, sampling_params)
        shown = 0
        try:
            while self.engine.has_unfinished():
                for out in self.engine.step():  # each step samples one token per sequence
                    if out.request_id != rid:
                        continue
                    c = out.outputs[0]
                    yield StreamEvent(c.token_ids[-1], c.text[shown:], c.finish_reason,
                                      c.stop_reason)
                    shown = len(c.text)
                    if out.finished:
                        return
        finally:
            self.engine.abort(rid)

    def default_sampling_params(self) -> SamplingParams:
        """Defaults from generation_config.json, as vLLM does when none are given."""
        g = self.generation_config
        found = {k: g[k] for k in ("temperature", "top_p", "top_k", "min_p")
                 if g.get(k) is not None}
        if g.get("do_sample") is False:
            found["temperature"] = 0.0
        return SamplingParams(**found)

    # ---- internals --------------------------------------------------------------------

    @staticmethod
    def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
        if isinstance(prompts, str | dict):
            return [prompts]
        if isinstance(prompts, Sequence) and prompts and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompts):
            return [prompts]
        return list(prompts)

    def _run_to_completion(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="generate", unit="req")
        wanted = set(ids)
        while self.engine.has_unfinished() and len(done) < len(ids):
            for out in self.engine.step():
                if out.finished and out.request_id in wanted:
                    done[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [done[rid] for rid in ids]
