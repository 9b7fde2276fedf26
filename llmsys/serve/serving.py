"""What every endpoint shares: the loaded model and engine loop, and a request's life.

`Serving` holds the `LLM`, the `AsyncEngine` and the config. Its methods are the steps all
generation endpoints take: check the model name, turn a prompt into token ids off the event
loop, admit the request (engine refusals become 400 / 429 / 503), wait for the result while
watching for the client to leave (which aborts the request), and write Server-Sent Events.
The logprob helpers turn the engine's per-position dicts into the API's two shapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from llmsys.llm import LLM
from llmsys.outputs import PositionLogprobs, RequestOutput
from llmsys.sampling_params import SamplingParams
from llmsys.serve.async_engine import (
    AsyncEngine,
    EngineError,
    EngineStoppedError,
    RequestStream,
    TooManyRequestsError,
)
from llmsys.serve.config import ServerConfig
from llmsys.serve.errors import APIError, bad_request
from llmsys.serve.protocol import CompletionLogprobs, TokenLogprob, TopLogprob, Usage

T = TypeVar("T")
log = logging.getLogger("llmsys.serve")
SSE_DONE = "data: [DONE]\n\n"


def usage_of(outputs: list[RequestOutput]) -> Usage:
    """Token counts of finished requests: their prompts and all their completions."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    generated = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return Usage.of(prompt, generated)


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


@dataclass
class Serving:
    llm: LLM
    engine: AsyncEngine
    config: ServerConfig

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def max_model_len(self) -> int:
        return self.llm.max_model_len

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model '{model}' does not exist: this server serves "
                                f"'{self.model_name}'", "model", "model_not_found")

    def check_n(self, n: int, num_prompts: int = 1) -> None:
        if n * num_prompts > self.config.max_n:
            what = f"n={n}" if num_prompts == 1 else f"n={n} times {num_prompts} prompts"
            raise bad_request(f"{what} is too many completions for one request: the limit "
                              f"(max_n) is {self.config.max_n}", "n")

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work (templates, tokenization) in a worker thread; ValueError -> 400."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ValueError as e:  # includes TemplateError
            raise bad_request(str(e)) from None

    def prepare_prompt(self, prompt: str | list[int] | dict[str, Any]) -> dict[str, Any]:
        """Text, token ids, or {"prompt", "prompt_token_ids"} -> the dict, with the text
        decoded when only ids are given; checked against the vocabulary and the context."""
        text, ids = self.llm.engine.prepare_prompt(prompt)
        if text is None:
            text = self.llm.tokenizer.decode(ids, skip_special_tokens=False)
        return {"prompt": text, "prompt_token_ids": ids}

    async def add(self, request_id: str, prompt: dict[str, Any],
                  params: SamplingParams) -> RequestStream:
        try:
            return await self.engine.add(request_id, prompt, params)
        except ValueError as e:
            raise bad_request(str(e)) from None
        except TooManyRequestsError as e:
            raise APIError(429, str(e)) from None
        except EngineStoppedError as e:
            raise APIError(503, str(e)) from None

    async def final_outputs(self, streams: list[RequestStream],
                            raw: Request) -> list[RequestOutput]:
        """The last output of each stream; if the client leaves first, abort all of them and
        raise ClientGone."""
        consume = asyncio.ensure_future(asyncio.gather(*(_last(s) for s in streams)))
        watch = asyncio.ensure_future(_disconnected(raw))
        try:
            await asyncio.wait({consume, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            gone = not consume.done()
            if gone:
                consume.cancel()
                consume.add_done_callback(_retrieve)
                for s in streams:
                    s.close()
        if gone:
            raise ClientGone()
        try:
            return consume.result()
        except EngineStoppedError as e:
            raise APIError(503, str(e)) from None
        except EngineError as e:
            raise APIError(500, str(e)) from None


def _retrieve(future: asyncio.Future) -> None:
    """Mark a cancelled gather's outcome as seen (asyncio logs it otherwise)."""
    if not future.cancelled():
        future.exception()


async def _last(stream: RequestStream) -> RequestOutput:
    last = None
    async for out in stream:
        last = out
    assert last is not None
    return last


async def _disconnected(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass


def sse(event: BaseModel | dict) -> str:
    data = event.model_dump_json() if isinstance(event, BaseModel) else _json(event)
    return f"data: {data}\n\n"


def _json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


async def guarded_events(events: AsyncIterator[str], streams: list[RequestStream],
                         on_error: Callable[[APIError], str]) -> AsyncIterator[str]:
    """Close `streams` (aborting what is unfinished) however the events end: done, failed,
    or cancelled because the client disconnected. An engine failure mid-stream becomes an
    error event followed by [DONE]."""
    try:
        async for event in events:
            yield event
    except EngineStoppedError as e:
        yield on_error(APIError(503, str(e)))
        yield SSE_DONE
    except EngineError as e:
        yield on_error(APIError(500, str(e)))
        yield SSE_DONE
    except Exception as e:  # a bug: the status line is sent already, so say it in the stream
        log.exception("internal error while streaming")
        yield on_error(APIError(500, f"internal server error: {type(e).__name__}"))
        yield SSE_DONE
    finally:
        for s in streams:
            s.close()


def error_event(error: APIError) -> str:
    return sse(error.body())


# ---- logprobs ------------------------------------------------------------------------------

def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(entries: list[PositionLogprobs], token_ids: list[int],
                  k: int) -> list[TokenLogprob]:
    """The chat shape: per token its logprob and the top `k` alternatives."""
    out = []
    for entry, tok in zip(entries, token_ids):
        chosen = entry[tok]
        top = sorted((e for e in entry.items() if e[1].rank <= k), key=lambda e: e[1].rank)
        text = chosen.decoded_token or ""
        out.append(TokenLogprob(
            token=text, logprob=chosen.logprob, bytes=_bytes(text),
            top_logprobs=[TopLogprob(token=lp.decoded_token or "", logprob=lp.logprob,
                                     bytes=_bytes(lp.decoded_token or ""))
                          for _, lp in top[:k]]))
    return out


def completion_logprobs(entries: list[PositionLogprobs | None], token_ids: list[int],
                        text_offset: int, decode: Callable[[int], str]) -> CompletionLogprobs:
    """The completions shape: tokens, their logprobs (None for a first prompt token), the
    top alternatives as {token: logprob}, and each token's character offset in the text."""
    out = CompletionLogprobs()
    for entry, tok in zip(entries, token_ids):
        if entry is None:
            text, logprob, top = decode(tok), None, None
        else:
            text, logprob = entry[tok].decoded_token or "", entry[tok].logprob
            top = {lp.decoded_token or "": lp.logprob for lp in entry.values()}
        out.tokens.append(text)
        out.token_logprobs.append(logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(text_offset)
        text_offset += len(text)
    return out
