"""POST /v1/completions: prompts (text or token ids, one or many) -> engine -> text.

`prompt` may be a string, a list of strings, a list of token ids or a list of token-id
lists; each prompt is its own engine request (batched with everything else in flight) and
gives `n` choices, indexed prompt-major (`prompt_index * n + i`). `echo` puts the prompt in
front of the text; `logprobs=k` returns each token's logprob and the top `k` alternatives
(with `echo`, the prompt tokens' too, the first one None), as lm-eval-harness expects for
log-likelihoods. `max_tokens` defaults to 16, as in the OpenAI API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from llmsys.outputs import CompletionOutput, RequestOutput
from llmsys.serve import sampling
from llmsys.serve.async_engine import RequestStream
from llmsys.serve.errors import bad_request
from llmsys.serve.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from llmsys.serve.serving import (
    SSE_DONE,
    ClientGone,
    Serving,
    completion_logprobs,
    error_event,
    guarded_events,
    sse,
    usage_of,
)

DEFAULT_MAX_TOKENS = 16


def _prompt_list(prompt: str | list) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt is empty: give a string, a list of strings, a list of token "
                          "ids or a list of token-id lists", "prompt")
    return [prompt] if isinstance(prompt[0], int) else list(prompt)


async def create_completion(ctx: Serving, req: CompletionRequest, raw: Request) -> Response:
    ctx.check_model(req.model)
    sampling.check_supported(req)
    if req.suffix:
        raise bad_request("suffix is not supported by this server: leave it out", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(f"best_of={req.best_of} is not supported: leave it out or make it "
                          f"equal to n", "best_of")
    prompts = _prompt_list(req.prompt)
    ctx.check_n(req.n, len(prompts))
    constraint = sampling.structured_outputs(req)
    prepared = [await ctx.off_loop(ctx.prepare_prompt, p) for p in prompts]
    defaults = ctx.llm.default_sampling_params()
    prompt_logprobs = req.logprobs if req.echo else None
    params = [sampling.build(req, defaults, logprobs=req.logprobs,
                             prompt_logprobs=prompt_logprobs, constraint=constraint,
                             max_tokens=sampling.resolve_max_tokens(
                                 req.max_tokens, DEFAULT_MAX_TOKENS,
                                 len(p["prompt_token_ids"]), ctx.max_model_len))
              for p in prepared]
    request_id = f"cmpl-{uuid.uuid4().hex}"
    streams: list[RequestStream] = []
    try:
        for i, (prompt, p) in enumerate(zip(prepared, params)):
            streams.append(await ctx.add(f"{request_id}-{i}", prompt, p))
    except BaseException:
        for s in streams:
            s.close()
        raise
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _events(ctx, req, request_id, streams, include_usage)
        return StreamingResponse(guarded_events(events, streams, error_event),
                                 media_type="text/event-stream")
    try:
        finals = await ctx.final_outputs(streams, raw)
    except ClientGone:
        return Response(status_code=499)
    choices = [_choice(ctx, req, i * req.n + c.index, out, c)
               for i, out in enumerate(finals) for c in out.outputs]
    body = CompletionResponse(id=request_id, model=ctx.model_name, choices=choices,
                              usage=usage_of(finals))
    return JSONResponse(body.model_dump())


def _choice(ctx: Serving, req: CompletionRequest, index: int, out: RequestOutput,
            c: CompletionOutput) -> CompletionChoice:
    text = (out.prompt or "") + c.text if req.echo else c.text
    return CompletionChoice(index=index, text=text, finish_reason=c.finish_reason,
                            logprobs=_logprobs(ctx, req, out, c, 0, req.echo, 0))


def _logprobs(ctx: Serving, req: CompletionRequest, out: RequestOutput, c: CompletionOutput,
              start: int, with_prompt: bool, offset: int) -> CompletionLogprobs | None:
    """Logprobs of the generated tokens from `start` on (and of the prompt before them);
    `offset`: the character offset of the first one in the choice's text."""
    if req.logprobs is None:
        return None
    # One entry per token; the engine keeps appending to c.logprobs, so count the tokens.
    entries: list[Any] = (c.logprobs or [])[start:len(c.token_ids)]
    tokens = c.token_ids[start:]
    if with_prompt:
        entries = list(out.prompt_logprobs or []) + entries
        tokens = out.prompt_token_ids + tokens
    decode = ctx.llm.tokenizer.decode
    return completion_logprobs(entries, tokens, offset,
                               lambda t: decode([t], skip_special_tokens=False))


async def _merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they come."""
    pending = {asyncio.ensure_future(s.__anext__()): i for i, s in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = pending.pop(task)
                try:
                    out = task.result()
                except StopAsyncIteration:
                    continue
                yield i, out
                pending[asyncio.ensure_future(streams[i].__anext__())] = i
    finally:
        for task in pending:
            task.cancel()


@dataclass
class _Sent:
    """What a streamed choice has sent so far."""

    chars: int = 0  # of the generated text
    logprobs: int = 0  # entries
    offset: int = 0  # characters sent in all, the prompt included
    done: bool = False


async def _events(ctx: Serving, req: CompletionRequest, request_id: str,
                  streams: list[RequestStream], include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    sent: dict[int, _Sent] = {}
    finished: list[RequestOutput] = []

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return sse(CompletionResponse(id=request_id, created=created, model=ctx.model_name,
                                      choices=choices, usage=usage))

    async for i, out in _merged(streams):
        for c in out.outputs:
            index = i * req.n + c.index
            first = index not in sent
            state = sent.setdefault(index, _Sent())
            num_logprobs = len(c.token_ids) if c.logprobs is not None else 0
            news = (len(c.text) > state.chars or num_logprobs > state.logprobs
                    or c.finish_reason is not None)
            if state.done or not (first or news):
                continue
            with_prompt = first and req.echo
            text = ((out.prompt or "") if with_prompt else "") + c.text[state.chars:]
            logprobs = _logprobs(ctx, req, out, c, state.logprobs, with_prompt, state.offset)
            state.chars, state.logprobs = len(c.text), num_logprobs
            state.offset += len(text)
            state.done = c.finish_reason is not None
            yield chunk([CompletionChoice(index=index, text=text, logprobs=logprobs,
                                          finish_reason=c.finish_reason)])
        if out.finished:
            finished.append(out)
    if include_usage:
        yield chunk([], usage_of(finished))
    yield SSE_DONE
