"""`LLMEngine`: continuous batching over a paged KV cache, one visible loop per step.

    engine.add_request("r1", "Hello", SamplingParams(max_tokens=16))
    while engine.has_unfinished():
        for out in engine.step():          # schedule -> run -> postprocess
            print(out.request_id, out.outputs[0].text, out.finished)

`step()` returns a `RequestOutput` (cumulative text and tokens) for every request that
produced a token, so a server can stream from it; `abort(request_id)` drops a request at any
moment and frees its blocks.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from llmsys.engine.block_manager import BlockManager
from llmsys.engine.grammar import GrammarCompiler
from llmsys.engine.model_runner import ModelRunner, StepResult
from llmsys.engine.output_text import OutputText
from llmsys.engine.sampler import make_generator, sample_batch, top_logprobs
from llmsys.engine.scheduler import ScheduledSeq, Scheduler
from llmsys.engine.sequence import Sequence
from llmsys.model.tokenizer import Tokenizer
from llmsys.model.transformer import Transformer
from llmsys.outputs import CompletionOutput, RequestOutput
from llmsys.sampling_params import SamplingParams

Prompt = str | Seq[int] | dict[str, Any]
DEFAULT_KV_CACHE_BYTES = 2 << 30  # 2 GiB: room for ~29k tokens of a 110M fp32 model


@dataclass
class EngineConfig:
    """Engine settings, with vLLM's names."""

    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's context length
    kv_cache_memory_bytes: int | None = None  # None: DEFAULT_KV_CACHE_BYTES
    num_kv_blocks: int | None = None  # overrides kv_cache_memory_bytes

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: must be an integer >= 1")
        for name in ("max_model_len", "kv_cache_memory_bytes", "num_kv_blocks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is invalid: must be an integer >= 1 or None")


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    seqs: list[Sequence] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


class LLMEngine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: EngineConfig,
                 eos_token_ids: set[int]):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.eos_token_ids = eos_token_ids
        limit = model.config.context_length
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(f"max_model_len={config.max_model_len} is invalid: must be in "
                             f"[1, {limit}] (the model's context length from config.json)")
        self.max_model_len = config.max_model_len or limit
        per_block = ModelRunner.kv_bytes_per_block(model, config.block_size)
        # Never more than max_num_seqs full-length sequences could use.
        useful = config.max_num_seqs * -(-self.max_model_len // config.block_size)
        num_blocks = config.num_kv_blocks or min(
            (config.kv_cache_memory_bytes or DEFAULT_KV_CACHE_BYTES) // per_block, useful)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory_bytes={config.kv_cache_memory_bytes} holds no "
                             f"KV block: one block takes {per_block} bytes")
        windows = model.config.sliding_windows
        # Blocks may leave the cache only when every layer slides (else some layer needs them).
        self.window = max(windows) if all(w is not None for w in windows) else None
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs,
                                   config.max_num_batched_tokens, self.window)
        self.runner = ModelRunner(model, num_blocks, config.block_size, self._decode_token)
        self.requests: dict[str, Request] = {}
        self.grammars: GrammarCompiler | None = None  # built at the first structured request

    # ---- the API a server drives --------------------------------------------------------

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, ids = self.prepare_prompt(prompt)
        max_tokens = min(params.max_tokens or self.max_model_len, self.max_model_len - len(ids))
        self._check_fits(len(ids) + max_tokens)
        so = params.structured_outputs  # compiled (ValueError if invalid) before any state
        grammars = [self._grammar_compiler().matcher(so) for _ in range(params.n)] if so else []
        request = Request(request_id, text, ids)
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            out_text = OutputText(self.tokenizer, ids, params.stop, params.skip_special_tokens)
            seq = Sequence(request_id, i, ids, params, out_text,
                           make_generator(seed, self.runner.device), max_tokens)
            seq.grammar = grammars[i] if grammars else None
            request.seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = request

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its blocks; False if it is unknown or done."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return False
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch:
            assert not self.has_unfinished(), "nothing schedulable yet requests remain"
            return []
        result = self.runner.run(batch)
        return self._postprocess(batch, result)

    # ---- prompts -------------------------------------------------------------------------

    def prepare_prompt(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        """A prompt (text, token ids, or a dict with 'prompt' / 'prompt_token_ids') ->
        (text or None, token ids), checked against the vocabulary and the context."""
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
        elif isinstance(prompt, Seq):
            text, ids = None, list(prompt)
        else:
            raise ValueError(f"a prompt must be a string, a list of token ids or a dict, "
                             f"got {type(prompt).__name__}")
        if not ids:
            raise ValueError("the prompt is empty: it must contain at least one token")
        vocab = self.model.config.vocab_size
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

    def _check_fits(self, num_tokens: int) -> None:
        """Admission: a request the whole cache could never hold is refused up front."""
        bs, budget = self.config.block_size, self.config.max_num_batched_tokens
        if self.window is not None:  # only the window (plus one chunk) is ever resident
            num_tokens = min(num_tokens, self.window + budget + bs)
        needed = -(-num_tokens // bs)
        if needed > self.blocks.num_blocks:
            raise ValueError(
                f"the request needs up to {num_tokens} tokens of KV cache ({needed} blocks of "
                f"{bs}) but the cache holds {self.blocks.num_blocks} blocks: raise "
                f"kv_cache_memory_bytes / num_kv_blocks or lower max_tokens")

    # ---- after the forward -----------------------------------------------------------------

    def _postprocess(self, batch: list[ScheduledSeq],
                     result: StepResult) -> list[RequestOutput]:
        sampling = [item.seq for item in batch if item.samples]
        for item in batch:
            seq = item.seq
            if id(seq) in result.prompt_logprobs:
                seq.prompt_logprobs.extend(result.prompt_logprobs[id(seq)])
            seq.num_computed_tokens += item.num_tokens
            self.blocks.commit(seq)
        logits = self._mask_grammars(self._bar_early_stops(result.logits, sampling),
                                     result.logits, sampling)
        tokens = sample_batch(logits, [s.params for s in sampling],
                              [s.generator for s in sampling])
        touched: dict[str, Request] = {}
        for row, (seq, token) in enumerate(zip(sampling, tokens)):
            self._append_token(seq, token, result.logits[row])
            touched[seq.request_id] = self.requests[seq.request_id]
        outputs = [self._request_output(r) for r in touched.values()]
        for out in outputs:
            if out.finished:
                del self.requests[out.request_id]
        return outputs

    def _bar_early_stops(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Until min_tokens, EOS and stop token ids cannot be sampled (logprobs stay raw)."""
        rows = [i for i, s in enumerate(seqs) if s.num_output_tokens < s.params.min_tokens]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            params = seqs[i].params
            barred = set(params.stop_token_ids) | (set() if params.ignore_eos
                                                   else self.eos_token_ids)
            logits[i, sorted(barred)] = float("-inf")
        return logits

    def _mask_grammars(self, logits: torch.Tensor, raw: torch.Tensor,
                       seqs: list[Sequence]) -> torch.Tensor:
        """Structured outputs: each constrained row keeps only the tokens its grammar allows
        next (EOS only where the grammar may end). Logprobs stay those of the raw logits."""
        rows = [(i, s.grammar) for i, s in enumerate(seqs) if s.grammar is not None]
        if not rows:
            return logits
        forbidden = self.grammars.forbidden_tokens(rows, *logits.shape).to(logits.device)
        masked = logits.masked_fill(forbidden, float("-inf"))
        stuck = (masked == float("-inf")).all(-1)
        if stuck.any():  # min_tokens barred every token the grammar allows: the grammar wins
            masked[stuck] = raw[stuck].masked_fill(forbidden[stuck], float("-inf"))
        return masked

    def _grammar_compiler(self) -> GrammarCompiler:
        eos = frozenset(self.eos_token_ids)
        if self.grammars is None or self.grammars.eos_token_ids != eos:
            self.grammars = GrammarCompiler(self.tokenizer, self.model.config.vocab_size, eos)
        return self.grammars

    def _append_token(self, seq: Sequence, token: int, logits: torch.Tensor) -> None:
        params = seq.params
        seq.token_ids.append(token)
        if seq.grammar is not None:
            seq.grammar.accept(token)
        if seq.logprobs is not None:
            lp = logits.log_softmax(-1)[None]
            entry = top_logprobs(lp, logits.new_tensor([token]).long(), params.logprobs,
                                 self._decode_token)[0]
            seq.logprobs.append(entry)
            seq.cumulative_logprob += entry[token].logprob
        finish, reason = None, None
        if not params.ignore_eos and token in self.eos_token_ids:
            finish = "stop"
        elif token in params.stop_token_ids:
            finish, reason = "stop", token
        elif seq.grammar is not None and seq.grammar.is_finished:
            finish = "stop"  # the grammar is complete: nothing but EOS could follow
        elif seq.num_output_tokens >= seq.max_tokens:
            finish = "length"
        seq.text.push(token, last=finish is not None)
        if seq.text.stop_hit is not None:
            finish, reason = "stop", seq.text.stop_hit
        if finish is not None:
            seq.finish_reason, seq.stop_reason = finish, reason
            self.scheduler.finish(seq)

    def _request_output(self, request: Request) -> RequestOutput:
        outputs = []
        for seq in request.seqs:
            cumulative = seq.cumulative_logprob if seq.logprobs else None
            outputs.append(CompletionOutput(
                seq.index, seq.text.text[:seq.text.emitted], seq.output_token_ids, cumulative,
                seq.logprobs, seq.finish_reason, seq.stop_reason))
        first = request.seqs[0]
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             first.prompt_logprobs, outputs, finished=request.finished)

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
