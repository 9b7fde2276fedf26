"""`LLM`: the offline API, shaped like vLLM's.

    from llmsys import LLM, SamplingParams
    llm = LLM("path/to/checkpoint", dtype="float32")
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(temperature=0, max_tokens=16))
    print(outs[0].text, outs[0].token_ids, outs[0].finish_reason)

Generation here is a simple loop over requests with a contiguous KV cache per request:
prefill the prompt in one forward, then decode one token per forward.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmsys.engine.output_text import OutputText
from llmsys.engine.sampler import make_generator, sample, top_logprobs
from llmsys.kernels.cpu_half import use_fast_half_matmul
from llmsys.model.checkpoint import load_model, read_json
from llmsys.model.kv_cache import ContiguousKVCache
from llmsys.model.tokenizer import Tokenizer
from llmsys.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from llmsys.sampling_params import SamplingParams

Prompt = str | Sequence[int] | dict[str, Any]
# How many prompt positions go through the LM head at once for prompt_logprobs.
_LOGPROB_CHUNK = 1024


@dataclass
class StreamEvent:
    """One generated token: its id, the text it completed, and (at the end) the reason."""

    token_id: int
    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last token
    stop_reason: int | str | None = None  # the stop token id or string that ended it


class LLM:
    def __init__(self, model: str | os.PathLike, dtype: str | torch.dtype = "auto",
                 device: str | torch.device = "cpu", max_model_len: int | None = None):
        self.model, self.config = load_model(model, dtype=dtype, device=device)
        self.device = torch.device(device)
        use_fast_half_matmul(self.model)  # a no-op unless half precision on a CPU that gains
        self.tokenizer = Tokenizer.from_dir(model)
        gen_path = Path(model) / "generation_config.json"
        self.generation_config = read_json(gen_path) if gen_path.exists() else {}
        limit = self.config.context_length
        if max_model_len is not None and not 0 < max_model_len <= limit:
            raise ValueError(f"max_model_len={max_model_len} is invalid: must be in [1, {limit}] "
                             "(the model's context length from config.json)")
        self.max_model_len = max_model_len or limit
        # The tokenizer's EOS ids already include generation_config.json's.
        self.eos_token_ids = set(self.tokenizer.eos_token_ids) | set(self.config.eos_token_ids)

    # ---- public API -------------------------------------------------------------------

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        params = sampling_params or self.default_sampling_params()
        batch = self._as_prompt_list(prompts)
        requests = [self._prepare(p) for p in batch]  # validate all before running any
        iterator: Any = requests
        if use_tqdm:
            from tqdm import tqdm
            iterator = tqdm(requests, desc="generate", unit="req")
        return [self._run(i, text, ids, params) for i, (text, ids) in enumerate(iterator)]

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
        """Yield tokens of one completion as they are generated."""
        _, ids = self._prepare(prompt)
        generator = make_generator(sampling_params.seed, self.device)
        yield from self._decode(ids, sampling_params, generator, None, None)

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

    def _prepare(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        """Prompt -> (text or None, token ids), validated against vocab and context."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                text, ids = prompt.get("prompt"), list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                text, ids = prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
            else:
                raise ValueError(f"prompt dict needs 'prompt' or 'prompt_token_ids', got "
                                 f"keys {sorted(prompt)}")
        elif isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, Sequence):
            text, ids = None, list(prompt)
        else:
            raise ValueError(f"a prompt must be a string, a list of token ids or a dict, "
                             f"got {type(prompt).__name__}")
        if not ids:
            raise ValueError("the prompt is empty: it must contain at least one token")
        vocab = self.config.vocab_size
        bad = [t for t in ids
               if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} out of range: "
                             f"must be integers in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but the model's context "
                             f"(max_model_len) is {self.max_model_len}: at most "
                             f"{self.max_model_len - 1} prompt tokens leave room to generate")
        return text, ids

    def _run(self, index: int, text: str | None, ids: list[int],
             params: SamplingParams) -> RequestOutput:
        generator = make_generator(params.seed, self.device)
        prompt_lps: list[PositionLogprobs | None] | None = None
        completions = []
        for i in range(params.n):
            lps: list[PositionLogprobs] | None = [] if params.logprobs is not None else None
            want_prompt_lps = params.prompt_logprobs is not None and i == 0
            prompt_out: list = [] if want_prompt_lps else None
            tokens, pieces, finish, stop_reason = [], [], None, None
            for ev in self._decode(ids, params, generator, prompt_out, lps):
                tokens.append(ev.token_id)
                pieces.append(ev.text)
                finish, stop_reason = ev.finish_reason, ev.stop_reason
            if want_prompt_lps:
                prompt_lps = prompt_out
            out_text = "".join(pieces)
            cumulative = sum(d[t].logprob for d, t in zip(lps, tokens)) if lps else None
            completions.append(CompletionOutput(i, out_text, tokens, cumulative, lps, finish,
                                                stop_reason))
        return RequestOutput(str(index), text, ids, prompt_lps, completions)

    @torch.inference_mode()
    def _decode(self, prompt_ids: list[int], params: SamplingParams,
                generator: torch.Generator, prompt_logprobs_out: list | None,
                logprobs_out: list | None) -> Iterator[StreamEvent]:
        """Prefill, then sample and decode until a stop condition."""
        cfg, dev = self.config, self.device
        budget = self.max_model_len - len(prompt_ids)
        max_new = min(params.max_tokens or budget, budget)
        cache = ContiguousKVCache(cfg.num_layers, 1, len(prompt_ids) + max_new, cfg.num_kv_heads,
                                  cfg.head_dim, self.model.embed_tokens.weight.dtype, dev)
        ids = torch.tensor([prompt_ids], device=dev)
        pos = torch.arange(len(prompt_ids), device=dev)[None]
        # 1. Prefill.
        hidden = self.model.hidden_states(ids, pos, cache)[0]  # (T, H)
        if prompt_logprobs_out is not None:
            prompt_logprobs_out.extend(self._prompt_logprobs(hidden, prompt_ids,
                                                             params.prompt_logprobs))
        logits = self.model.logits(hidden[-1])
        text = OutputText(self.tokenizer, prompt_ids, params.stop, params.skip_special_tokens)
        stop_ids = set(params.stop_token_ids)
        eos = set() if params.ignore_eos else self.eos_token_ids
        for step in range(max_new):
            # 2. Sample the next token (EOS and stop ids are barred until min_tokens).
            allowed = logits
            if step < params.min_tokens and (eos or stop_ids):
                allowed = logits.index_fill(0, torch.tensor(sorted(eos | stop_ids), device=dev),
                                            float("-inf"))
            token = sample(allowed, params, generator)
            if logprobs_out is not None:  # of the raw distribution, as vLLM reports them
                lp = torch.log_softmax(logits.float(), -1)[None]
                logprobs_out.extend(top_logprobs(lp, torch.tensor([token], device=dev),
                                                 params.logprobs, self._decode_token))
            # 3. Check stop conditions.
            finish, reason = None, None
            if token in eos or token in stop_ids:
                finish, reason = "stop", (token if token in stop_ids else None)
            elif step == max_new - 1:
                finish = "length"
            delta = text.push(token, last=finish is not None)
            if text.stop_hit is not None:
                finish, reason = "stop", text.stop_hit
            yield StreamEvent(token, delta, finish, reason)
            if finish:
                return
            # 4. Decode one token.
            p = len(prompt_ids) + step
            logits = self.model(torch.tensor([[token]], device=dev),
                                torch.tensor([[p]], device=dev), cache)[0, -1]

    def _prompt_logprobs(self, hidden: torch.Tensor, prompt_ids: list[int],
                         k: int) -> list[PositionLogprobs | None]:
        out: list[PositionLogprobs | None] = [None]
        targets = torch.tensor(prompt_ids[1:], device=hidden.device)
        for s in range(0, len(prompt_ids) - 1, _LOGPROB_CHUNK):
            lp = torch.log_softmax(self.model.logits(hidden[s:s + _LOGPROB_CHUNK]).float(), -1)
            n = min(_LOGPROB_CHUNK, len(prompt_ids) - 1 - s)
            out.extend(top_logprobs(lp[:n], targets[s:s + n], k, self._decode_token))
        return out

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
