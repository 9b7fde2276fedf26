"""From an OpenAI request to the engine's `SamplingParams` (and `StructuredOutputsParams`).

Fields a request leaves out take the model's generation_config.json defaults, then OpenAI's.
`response_format` (`json_object`, `json_schema`), vLLM's `structured_outputs` field and its
older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` all map to one
`StructuredOutputsParams`; asking for two constraints at once is a 400. Every value the
engine rejects becomes a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from llmsys.sampling_params import SamplingParams, StructuredOutputsParams
from llmsys.serve.errors import APIError, bad_request
from llmsys.serve.protocol import SamplingRequest

T = TypeVar("T")


def check_supported(req: SamplingRequest) -> None:
    """Fields this server knows but does not implement are accepted at neutral values only."""
    neutral = [("presence_penalty", req.presence_penalty, 0.0),
               ("frequency_penalty", req.frequency_penalty, 0.0),
               ("repetition_penalty", req.repetition_penalty, 1.0)]
    for name, value, default in neutral:
        if value != default:
            raise bad_request(f"{name}={value} is not supported by this server: leave it out "
                              f"or set it to {default}", name)
    if req.logit_bias:
        raise bad_request("logit_bias is not supported by this server: leave it out",
                          "logit_bias")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed with stream=true", "stream_options")


def structured_outputs(req: SamplingRequest) -> StructuredOutputsParams | None:
    """The one output constraint the request asks for, if any."""
    SOP = StructuredOutputsParams
    found: list[tuple[str, StructuredOutputsParams]] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(("response_format", checked("response_format",
                                                 lambda: SOP(json_object=True))))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise bad_request("response_format of type json_schema needs "
                              "json_schema.schema (a JSON schema object)",
                              "response_format.json_schema")
        schema = fmt.json_schema.schema_
        found.append(("response_format", checked("response_format", lambda: SOP(json=schema))))
    so = req.structured_outputs
    if so is not None:
        found.append(("structured_outputs", checked("structured_outputs", lambda: SOP(
            json=so.json_, regex=so.regex, choice=so.choice, grammar=so.grammar,
            json_object=bool(so.json_object)))))
    guided = [("guided_json", req.guided_json, lambda: SOP(json=req.guided_json)),
              ("guided_regex", req.guided_regex, lambda: SOP(regex=req.guided_regex)),
              ("guided_choice", req.guided_choice, lambda: SOP(choice=req.guided_choice)),
              ("guided_grammar", req.guided_grammar, lambda: SOP(grammar=req.guided_grammar))]
    for name, value, make in guided:
        if value is not None:
            found.append((name, checked(name, make)))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise bad_request(f"only one output constraint is allowed per request, got {names}",
                          found[1][0])
    return found[0][1] if found else None


def checked(param: str, make: Callable[[], T]) -> T:
    """`make()`; a ValueError (a value the engine's dataclasses reject) is a 400."""
    try:
        return make()
    except (ValueError, TypeError) as e:
        raise bad_request(str(e), param) from None


def resolve_max_tokens(requested: int | None, default: int | None, num_prompt_tokens: int,
                       max_model_len: int, param: str = "max_tokens") -> int:
    """`requested` (or `default`, or all the room left) checked against the context."""
    room = max_model_len - num_prompt_tokens
    if requested is None:
        return room if default is None else min(default, room)
    if requested > room:
        raise bad_request(
            f"{param}={requested} is too large: the prompt has {num_prompt_tokens} tokens and "
            f"the context (max_model_len) is {max_model_len}, so at most {room} tokens can be "
            f"generated", param)
    return requested


def build(req: SamplingRequest, defaults: SamplingParams, *, max_tokens: int,
          logprobs: int | None, prompt_logprobs: int | None,
          constraint: StructuredOutputsParams | None) -> SamplingParams:
    """The engine's params for `req`; a value the engine rejects is a 400."""
    def pick(value, default):
        return default if value is None else value

    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            n=req.n, temperature=pick(req.temperature, defaults.temperature),
            top_p=pick(req.top_p, defaults.top_p), top_k=pick(req.top_k, defaults.top_k),
            min_p=pick(req.min_p, defaults.min_p), seed=req.seed, max_tokens=max_tokens,
            min_tokens=req.min_tokens, stop=stop,
            stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=req.skip_special_tokens, structured_outputs=constraint)
    except ValueError as e:  # messages read "name=value is invalid: must be ..."
        name = str(e).split("=")[0]
        raise APIError(400, str(e), name if name.isidentifier() else None) from None
