"""POST /v1/chat/completions: messages -> chat template -> engine -> message or SSE stream.

Tool choice (tools are rendered into the prompt by the chat template, Hermes style):
  - `auto` (the default when tools are given): the model may write `<tool_call>` blocks;
    they are parsed out of the text into `tool_calls`.
  - `required`: the output is constrained to a JSON array of 1.. calls (one unless
    `parallel_tool_calls`), each `{"name": <a tool's name>, "arguments": <its parameters>}`.
  - a named function: the output is constrained to that function's arguments.
  - `none` (the default without tools): tools are left out of the prompt altogether, so
    the model answers in text and nothing is parsed.
`finish_reason` is `tool_calls` when a call was made (unless generation hit `length`).

A stream sends, per choice: a role delta, content / tool-call deltas (a call's id, type
and name first, then its arguments in fragments), a finish chunk; then an optional usage
chunk with no choices, then `data: [DONE]`. Streamed and non-streamed responses run the
same tool parser, so they carry the same content and calls.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from llmsys.outputs import CompletionOutput, RequestOutput
from llmsys.sampling_params import StructuredOutputsParams
from llmsys.serve import sampling
from llmsys.serve.errors import bad_request
from llmsys.serve.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatStreamChoice,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    Usage,
)
from llmsys.serve.serving import (
    SSE_DONE,
    ClientGone,
    Serving,
    chat_logprobs,
    error_event,
    guarded_events,
    sse,
    usage_of,
)
from llmsys.serve.tool_parsers import (
    HermesToolParser,
    JsonArrayToolParser,
    NamedToolParser,
    ParsedDelta,
    ToolCallDelta,
    ToolParser,
    named_tool_schema,
    parse_all,
    required_tools_schema,
)


@dataclass
class ToolMode:
    """How a request's tools are used: what the template sees, what constrains, what parses."""

    rendered: list[dict] | None = None
    constraint: StructuredOutputsParams | None = None
    new_parser: Callable[[], ToolParser] | None = None


def tool_mode(req: ChatCompletionRequest) -> ToolMode:
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice or ("auto" if tools else "none")
    if not tools:
        if choice != "none":
            raise bad_request("tool_choice needs tools: give `tools` or drop `tool_choice`",
                              "tool_choice")
        return ToolMode()
    if choice == "none":
        return ToolMode()
    if choice == "auto":
        return ToolMode(tools, None, HermesToolParser)
    if choice == "required":
        schema = required_tools_schema(tools, req.parallel_tool_calls)
        constraint = sampling.checked("tools", lambda: StructuredOutputsParams(json=schema))
        return ToolMode(tools, constraint, JsonArrayToolParser)
    name = choice.function.name
    names = [t["function"]["name"] for t in tools]
    if name not in names:
        raise bad_request(f"tool_choice names the function '{name}', which is not in tools "
                          f"(they are: {', '.join(names)})", "tool_choice")
    schema = named_tool_schema(tools, name)
    constraint = sampling.checked("tools", lambda: StructuredOutputsParams(json=schema))
    return ToolMode(tools, constraint, lambda: NamedToolParser(name))


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the chat template takes them (text parts only)."""
    out = []
    for i, m in enumerate(messages):
        msg = m.model_dump(exclude_none=True)
        if msg["role"] == "developer":  # OpenAI's newer name for the system role
            msg["role"] = "system"
        for j, part in enumerate(m.content if isinstance(m.content, list) else []):
            if part.type != "text" or part.text is None:
                raise bad_request(f"messages[{i}].content[{j}] has type '{part.type}': only "
                                  f"text parts are supported", f"messages[{i}].content")
        out.append(msg)
    return out


async def create_chat_completion(ctx: Serving, req: ChatCompletionRequest,
                                 raw: Request) -> Response:
    ctx.check_model(req.model)
    sampling.check_supported(req)
    ctx.check_n(req.n)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
    mode = tool_mode(req)
    constraint = sampling.structured_outputs(req)
    if constraint is not None and mode.constraint is not None:
        raise bad_request("response_format / structured outputs cannot be combined with "
                          "tool_choice 'required' or a named function", "tool_choice")
    prompt = await ctx.off_loop(_render, ctx, req, mode)
    n_prompt = len(prompt["prompt_token_ids"])
    if req.max_completion_tokens is not None:
        max_tokens = sampling.resolve_max_tokens(req.max_completion_tokens, None, n_prompt,
                                                 ctx.max_model_len, "max_completion_tokens")
    else:
        max_tokens = sampling.resolve_max_tokens(req.max_tokens, None, n_prompt,
                                                 ctx.max_model_len)
    k = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling.build(req, ctx.llm.default_sampling_params(), max_tokens=max_tokens,
                            logprobs=k, prompt_logprobs=None,
                            constraint=constraint or mode.constraint)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    stream = await ctx.add(request_id, prompt, params)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _chat_events(ctx, req, request_id, stream, mode, n_prompt, include_usage)
        return StreamingResponse(guarded_events(events, [stream], error_event),
                                 media_type="text/event-stream")
    try:
        [final] = await ctx.final_outputs([stream], raw)
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(_chat_response(ctx, req, request_id, final, mode).model_dump())


def _render(ctx: Serving, req: ChatCompletionRequest, mode: ToolMode) -> dict[str, Any]:
    prompt = ctx.llm.render_chat(chat_messages(req.messages), tools=mode.rendered,
                                 add_generation_prompt=req.add_generation_prompt,
                                 chat_template_kwargs=req.chat_template_kwargs)
    return ctx.prepare_prompt(prompt)


def _finish_reason(c: CompletionOutput, num_calls: int) -> str | None:
    if c.finish_reason == "stop" and num_calls:
        return "tool_calls"
    return c.finish_reason


def _chat_response(ctx: Serving, req: ChatCompletionRequest, request_id: str,
                   out: RequestOutput, mode: ToolMode) -> ChatCompletionResponse:
    choices = []
    for c in out.outputs:
        content, calls = (parse_all(mode.new_parser(), c.text) if mode.new_parser
                          else (c.text, []))
        tool_calls = [ToolCall(id=t.id, function=FunctionCall(name=t.name, arguments=t.arguments))
                      for t in calls]
        logprobs = None
        if req.logprobs:
            entries = chat_logprobs(c.logprobs or [], c.token_ids, req.top_logprobs or 0)
            logprobs = ChatLogprobs(content=entries)
        choices.append(ChatChoice(index=c.index, message=ResponseMessage(
            content=content, tool_calls=tool_calls), logprobs=logprobs,
            finish_reason=_finish_reason(c, len(calls))))
    return ChatCompletionResponse(id=request_id, model=ctx.model_name, choices=choices,
                                  usage=usage_of([out]))


@dataclass
class _ChoiceState:
    parser: ToolParser | None
    text_len: int = 0
    num_logprobs: int = 0
    num_calls: int = 0
    num_tokens: int = 0
    done: bool = False


async def _chat_events(ctx: Serving, req: ChatCompletionRequest, request_id: str, stream,
                       mode: ToolMode, num_prompt_tokens: int,
                       include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(choice: ChatStreamChoice | None, usage: Usage | None = None) -> str:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=ctx.model_name,
                                       choices=[choice] if choice else [], usage=usage))

    states = [_ChoiceState(mode.new_parser() if mode.new_parser else None)
              for _ in range(req.n)]
    for i in range(req.n):
        yield chunk(ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content="")))
    async for out in stream:
        for c in out.outputs:
            state = states[c.index]
            if state.done:
                continue
            delta = _advance(state, c, req)
            if delta is not None:
                yield chunk(delta)
            if c.finish_reason is not None:
                state.done, state.num_tokens = True, len(c.token_ids)
                yield chunk(ChatStreamChoice(index=c.index, delta=DeltaMessage(),
                                             finish_reason=_finish_reason(c, state.num_calls)))
    if include_usage:
        generated = sum(s.num_tokens for s in states)
        yield chunk(None, Usage.of(num_prompt_tokens, generated))
    yield SSE_DONE


def _advance(state: _ChoiceState, c: CompletionOutput,
             req: ChatCompletionRequest) -> ChatStreamChoice | None:
    """The delta one choice gained since it was last seen (None if nothing to send)."""
    text, state.text_len = c.text[state.text_len:], len(c.text)
    if state.parser is None:
        parsed = ParsedDelta(content=text)
    else:
        parsed = state.parser.feed(text)
        if c.finish_reason is not None:
            parsed.extend(state.parser.finish())
    logprobs = None
    # One entry per token; the engine keeps appending to c.logprobs, so count the tokens.
    if req.logprobs and c.logprobs is not None and len(c.token_ids) > state.num_logprobs:
        start, state.num_logprobs = state.num_logprobs, len(c.token_ids)
        logprobs = ChatLogprobs(content=chat_logprobs(
            c.logprobs[start:state.num_logprobs], c.token_ids[start:], req.top_logprobs or 0))
    calls = _coalesce(parsed.tool_calls)
    for call in calls:
        if call.id is not None:
            state.num_calls += 1
    if not parsed.content and not calls and logprobs is None:
        return None
    return ChatStreamChoice(index=c.index, logprobs=logprobs, delta=DeltaMessage(
        content=parsed.content or None, tool_calls=calls or None))


def _coalesce(pieces: list[ToolCallDelta]) -> list[DeltaToolCall]:
    """One delta per call within a chunk: the first carries id, type and name."""
    out: list[DeltaToolCall] = []
    for p in pieces:
        if out and out[-1].index == p.index:
            out[-1].function.arguments = (out[-1].function.arguments or "") + p.arguments
            continue
        first = p.id is not None
        out.append(DeltaToolCall(index=p.index, id=p.id, type="function" if first else None,
                                 function=DeltaFunction(name=p.name,
                                                        arguments=p.arguments
                                                        if p.arguments or first else None)))
    return out
