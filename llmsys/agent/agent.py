"""The agent loop: model call → parse actions → validate → run tools (in parallel) → observe.

    agent = Agent(model=ChatModel(base_url, "llmsys-tiny-chat"), tools=[calculator],
                  instructions="Answer briefly.", limits=Limits(max_steps=6))
    result = agent.run("What is 12 * 7?")           # RunResult
    for event in agent.stream("What is 12 * 7?"):   # Event per model call / tool result / end
        print(event.kind, event.data)

Every model call is a step. Its reply is parsed by the tool protocol (`protocols.py`:
native tools, JSON actions or ReAct text; `mode="auto"` starts native and falls back when
the endpoint refuses tools or structured outputs). Arguments are validated against each
tool's schema; a parse error, an unknown tool, invalid arguments or a tool exception go back
to the model as the observation, and more than `max_retries_per_step` such failures in a row
end the run. Guards end the run in their own named state (`EndState`): step, token and cost
budgets (checked before a call, from the last prompt's size, so a budget is never passed),
wall clock, the same call repeated, no new observation for some steps. At a limit the model
gets one last call, without tools, for its best final answer, recorded as forced.

Tools marked `requires_approval` pause the run (state `awaiting_approval`, the calls in
`RunResult.pending`); `agent.resume(run_id, approve=...)` runs or refuses them and goes on.
Each step is written to the trace store with a checkpoint of the conversation, so
`agent.resume(run_id)` also continues a run whose process died.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from llmsys.agent.chat_model import ChatModel, ModelError, Usage
from llmsys.agent.protocols import (
    JsonActions,
    NativeTools,
    Observation,
    ReActText,
    ToolCall,
    ToolProtocol,
    protocol_for,
)
from llmsys.agent.tools import Tool, ToolArgumentError
from llmsys.agent.trace import TraceStore


class EndState(StrEnum):
    FINAL_ANSWER = "final_answer"
    MAX_STEPS = "max_steps"
    TOKEN_BUDGET = "token_budget"
    COST_BUDGET = "cost_budget"
    TIMEOUT = "timeout"
    REPEATED_CALL = "repeated_call"
    NO_PROGRESS = "no_progress"
    TOO_MANY_ERRORS = "too_many_errors"
    AWAITING_APPROVAL = "awaiting_approval"
    MODEL_ERROR = "model_error"


@dataclass
class Limits:
    max_steps: int = 10  # model calls
    max_total_tokens: int | None = None  # prompt + completion over the run
    max_cost: float | None = None  # in the ChatModel's price unit
    timeout_s: float | None = None  # wall clock of the loop
    max_repeated_calls: int = 3  # the same call (tool and arguments) this many times in a row
    max_stale_steps: int = 3  # steps in a row whose observations were all seen before
    max_retries_per_step: int = 2  # failed attempts (parse, validation, tool errors) in a row
    final_answer_tokens: int = 256  # the last call's reply at a limit
    final_call_timeout_s: float = 30.0
    max_parallel_tools: int = 8
    max_history_tokens: int = 2000  # a continued session's earlier messages are cut to this

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_repeated_calls", "max_stale_steps",
                     "final_answer_tokens", "max_parallel_tools", "max_history_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries_per_step < 0:
            raise ValueError(f"Limits.max_retries_per_step must be >= 0, got "
                             f"{self.max_retries_per_step}")
        for name in ("max_total_tokens", "max_cost", "timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Limits.{name} must be > 0 or None, got {value}")


@dataclass
class Event:
    """One thing that happened: kind is "model", "tool", "limit", "approval" or "end"."""

    kind: str
    step: int
    data: dict
    result: RunResult | None = None


@dataclass
class RunResult:
    run_id: str
    final_answer: str | None
    end_state: EndState
    steps: int
    usage: Usage
    cost: float
    forced_final: bool = False  # the answer came from the last call at a limit
    pending: list[ToolCall] = field(default_factory=list)  # awaiting approval
    session_id: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # every call run: name, args, result

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "final_answer": self.final_answer,
                "end_state": self.end_state.value, "steps": self.steps,
                "usage": self.usage.to_dict(), "cost": self.cost,
                "forced_final": self.forced_final, "session_id": self.session_id,
                "pending": [c.to_dict() for c in self.pending], "tool_calls": self.tool_calls}


@dataclass
class _State:
    """Everything the loop needs to continue; saved as the checkpoint after each step."""

    run_id: str
    task: str
    session_id: str | None
    mode: str
    messages: list[dict]
    step: int = 0
    usage: Usage = field(default_factory=Usage)
    errors_in_a_row: int = 0
    last_call_key: str | None = None
    repeats: int = 0
    stale_steps: int = 0
    seen: list[str] = field(default_factory=list)  # hashes of observations
    elapsed_s: float = 0.0  # loop time before this process took over
    last_prompt_tokens: int = 0
    chars_since_prompt: int = 0
    pending: list[dict] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> _State:
        data = dict(data)
        data["usage"] = Usage(**data["usage"])
        return cls(**data)


DEFAULT_INSTRUCTIONS = ("You are a helpful assistant. Use the tools when they help; when you "
                         "know the answer, give it.")


class Agent:
    def __init__(self, model: ChatModel, tools: list[Tool] | None = None, *,
                 instructions: str = DEFAULT_INSTRUCTIONS, limits: Limits | None = None,
                 mode: str = "auto", memory: Any = None, trace_db: str | Path | None = None):
        self.model, self.tools = model, list(tools or [])
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if mode != "auto":
            protocol_for(mode)  # validates the name
        self.instructions, self.limits, self.mode, self.memory = (
            instructions, limits or Limits(), mode, memory)
        path = trace_db if trace_db is not None else getattr(memory, "path", None)
        self.traces = TraceStore(path if path is not None else ":memory:")
        self._by_name = {t.name: t for t in self.tools}
        self._clock: dict[str, float] = {}  # run id -> monotonic time the loop clock started

    # ------------------------------------------------------------------------ public
    def run(self, task: str, session_id: str | None = None) -> RunResult:
        return _last_result(self.stream(task, session_id))

    def stream(self, task: str, session_id: str | None = None) -> Iterator[Event]:
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task must be a non-empty string")
        mode = self.mode if self.mode != "auto" else "native"
        state = _State(uuid.uuid4().hex, task, session_id, mode, [])
        state.messages = self._opening_messages(task, session_id, protocol_for(mode))
        self._clock[state.run_id] = time.monotonic()
        self.traces.start_run(state.run_id, task, session_id=session_id, mode=mode,
                              model=self.model.model)
        self._checkpoint(state, "running")
        yield from self._loop(state)

    def resume(self, run_id: str, approve: bool | dict[str, bool] | None = None) -> RunResult:
        return _last_result(self.resume_stream(run_id, approve))

    def resume_stream(self, run_id: str,
                      approve: bool | dict[str, bool] | None = None) -> Iterator[Event]:
        """Continue `run_id` from its last checkpoint (after a crash, or an approval pause:
        `approve` is True/False for every pending call, or {call_id: bool})."""
        run = self.traces.run(run_id)
        if run["state"] not in ("running", EndState.AWAITING_APPROVAL.value):
            raise ValueError(f"run {run_id} ended ({run['state']}); only a running or paused "
                             "run can be resumed")
        state = _State.from_json(run["checkpoint"])
        self._clock[run_id] = time.monotonic() - state.elapsed_s
        if state.pending:
            if approve is None:
                raise ValueError(f"run {run_id} waits for approval of "
                                 f"{[c['name'] for c in state.pending]}: pass approve=True/False "
                                 "or {call_id: bool}")
            calls = [ToolCall(**c) for c in state.pending]
            decisions = {c.id: (approve if isinstance(approve, bool) else approve.get(c.id, False))
                         for c in calls}
            state.pending = []
            yield from self._observe(state, calls, decisions)
            self._checkpoint(state, "running")
            ended = self._guards(state, calls)
            if ended:
                yield from self._finish_at_limit(state, ended)
                return
        yield from self._loop(state)

    # -------------------------------------------------------------------------- loop
    def _loop(self, state: _State) -> Iterator[Event]:
        while True:
            protocol = protocol_for(state.mode)
            limit = self._limit_before_call(state, protocol)
            if limit is not None:
                yield from self._finish_at_limit(state, limit)
                return
            try:
                action, reply_message = yield from self._call_model(state, protocol, False)
            except ModelError as e:
                yield self._end(state, EndState.MODEL_ERROR, None, error=str(e))
                return
            if action is None:  # the protocol changed (auto mode); ask again
                continue
            state.messages.append(protocol.assistant_message(reply_message, action))
            if action.error is not None:
                state.messages.append({"role": "user", "content": f"Error: {action.error}"})
                if (yield from self._count_failure(state)):
                    return
                continue
            if not action.calls:
                yield self._end(state, EndState.FINAL_ANSWER, action.final_answer or "")
                return
            needs_approval = [c for c in action.calls if c.name in self._by_name
                              and self._by_name[c.name].requires_approval]
            if needs_approval:
                state.pending = [c.to_dict() for c in action.calls]
                yield Event("approval", state.step, {"calls": state.pending})
                yield self._end(state, EndState.AWAITING_APPROVAL, None)
                return
            failures_before = state.errors_in_a_row
            yield from self._observe(state, action.calls, None)
            if state.errors_in_a_row > failures_before and (yield from self._count_failure(
                    state, counted=True)):
                return
            self._checkpoint(state, "running")
            ended = self._guards(state, action.calls)
            if ended:
                yield from self._finish_at_limit(state, ended)
                return

    def _call_model(self, state: _State, protocol: ToolProtocol, final: bool):
        """One model call (a generator so the event is streamed); returns (action, message),
        or (None, None) when auto mode switched protocols and the call must be redone."""
        estimate = self._prompt_estimate(state, protocol, final)
        max_tokens = self.model.max_tokens
        timeout = None
        if final:
            max_tokens = self.limits.final_answer_tokens
            if self.limits.max_total_tokens is not None:
                max_tokens = min(max_tokens, self.limits.max_total_tokens
                                 - state.usage.total_tokens - estimate)
            timeout = self.limits.final_call_timeout_s
        elif self.limits.timeout_s is not None:
            timeout = max(self.limits.timeout_s - self._elapsed(state), 0.1)
        try:
            reply = self.model.complete(state.messages, max_tokens=max_tokens, timeout_s=timeout,
                                        extra=protocol.request(self.tools, final))
        except ModelError as e:
            if self.mode == "auto" and e.status in (400, 404, 422) and not final:
                fallback = _fallback(state.mode)
                if fallback is not None:
                    self._switch_protocol(state, fallback, str(e))
                    yield Event("model", state.step, {"switched_mode": fallback,
                                                      "error": str(e)})
                    return None, None
            raise
        state.step += 1
        state.usage.add(reply.usage)
        state.last_prompt_tokens, state.chars_since_prompt = reply.usage.prompt_tokens, 0
        action = protocol.parse(reply.message)
        payload = {"message": reply.message, "thought": action.thought,
                   "calls": [c.to_dict() for c in action.calls],
                   "final_answer": action.final_answer, "final_call": final}
        self.traces.record(state.run_id, state.step, "model", payload, latency_s=reply.latency_s,
                           prompt_tokens=reply.usage.prompt_tokens,
                           completion_tokens=reply.usage.completion_tokens, error=action.error)
        yield Event("model", state.step, {**payload, "error": action.error,
                                          "latency_s": reply.latency_s})
        return action, reply.message

    def _observe(self, state: _State, calls: list[ToolCall],
                 decisions: dict[str, bool] | None) -> Iterator[Event]:
        """Run the calls (in parallel), append the observations, update the error count."""
        protocol = protocol_for(state.mode)
        t0 = time.perf_counter()
        remaining = (None if self.limits.timeout_s is None
                     else max(self.limits.timeout_s - self._elapsed(state), 0.1))
        results = self._execute(calls, decisions, remaining)
        latency = time.perf_counter() - t0
        observations = [Observation(call, text) for call, (text, _) in zip(calls, results)]
        new_messages = protocol.observation_messages(observations)
        state.messages += new_messages
        state.chars_since_prompt += sum(len(json.dumps(m)) for m in new_messages)
        all_failed = all(failed for _, failed in results)
        state.errors_in_a_row = state.errors_in_a_row + 1 if all_failed else 0
        fresh = False
        for call, (text, failed) in zip(calls, results):
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            fresh = fresh or digest not in state.seen
            state.seen.append(digest)
            state.tool_calls.append({"name": call.name, "arguments": call.arguments,
                                     "result": text, "error": failed})
            self.traces.record(state.run_id, state.step, "tool", {
                "call": call.to_dict(), "result": text}, latency_s=latency,
                error=text if failed else None)
            yield Event("tool", state.step, {"call": call.to_dict(), "result": text,
                                             "error": failed, "latency_s": latency})
        state.stale_steps = 0 if fresh else state.stale_steps + 1

    def _execute(self, calls: list[ToolCall], decisions: dict[str, bool] | None,
                 timeout: float | None) -> list[tuple[str, bool]]:
        """(observation text, failed) per call. Calls run in worker threads (several in
        parallel); one still running at the run's deadline is reported as such."""
        def one(call: ToolCall) -> tuple[str, bool]:
            tool = self._by_name.get(call.name)
            if tool is None:
                return (f"Error: unknown tool {call.name!r}; available tools: "
                        f"{sorted(self._by_name)}", True)
            if tool.requires_approval and decisions is not None and not decisions.get(call.id):
                return f"Error: the user did not approve this call of {call.name}.", True
            try:
                text = tool.run(call.arguments)
                return text, text.startswith("Error:")  # tools report expected failures so
            except ToolArgumentError as e:
                return f"Error: {e}", True
            except Exception as e:  # a tool's own failure is an observation, not a crash
                return f"Error: {call.name} failed: {type(e).__name__}: {e}", True

        if len(calls) == 1 and timeout is None:
            return [one(calls[0])]
        pool = ThreadPoolExecutor(max_workers=min(len(calls), self.limits.max_parallel_tools))
        futures = [pool.submit(one, c) for c in calls]
        wait(futures, timeout=timeout)
        pool.shutdown(wait=False, cancel_futures=True)
        return [f.result() if f.done() else (f"Error: {c.name} did not finish in time", True)
                for f, c in zip(futures, calls)]

    # ------------------------------------------------------------------------ guards
    def _limit_before_call(self, state: _State, protocol: ToolProtocol) -> EndState | None:
        limits = self.limits
        if state.step >= limits.max_steps:
            return EndState.MAX_STEPS
        if limits.timeout_s is not None and self._elapsed(state) >= limits.timeout_s:
            return EndState.TIMEOUT
        estimate = self._prompt_estimate(state, protocol, False)
        # Room for this call and, after it, a last call for the final answer.
        need = 2 * estimate + self.model.max_tokens + limits.final_answer_tokens
        if (limits.max_total_tokens is not None
                and state.usage.total_tokens + need > limits.max_total_tokens):
            return EndState.TOKEN_BUDGET
        if limits.max_cost is not None:
            cost = self.model.cost(state.usage) + self.model.cost(Usage(
                2 * estimate, self.model.max_tokens + limits.final_answer_tokens))
            if cost > limits.max_cost:
                return EndState.COST_BUDGET
        return None

    def _guards(self, state: _State, calls: list[ToolCall]) -> EndState | None:
        key = json.dumps(sorted([c.name, _canonical(c.arguments)] for c in calls))
        state.repeats = state.repeats + 1 if key == state.last_call_key else 1
        state.last_call_key = key
        if state.repeats >= self.limits.max_repeated_calls:
            return EndState.REPEATED_CALL
        if state.stale_steps >= self.limits.max_stale_steps:
            return EndState.NO_PROGRESS
        return None

    def _count_failure(self, state: _State, counted: bool = False):
        """After a failed attempt: end the run when the retry cap is passed."""
        if not counted:
            state.errors_in_a_row += 1
        self._checkpoint(state, "running")
        if state.errors_in_a_row > self.limits.max_retries_per_step:
            yield from self._finish_at_limit(state, EndState.TOO_MANY_ERRORS)
            return True
        return False

    def _finish_at_limit(self, state: _State, limit: EndState) -> Iterator[Event]:
        """One last call without tools for the best final answer, if the budgets allow it."""
        yield Event("limit", state.step, {"limit": limit.value})
        state.messages.append({"role": "user", "content": (
            f"You have reached a limit ({limit.value.replace('_', ' ')}). Do not call any "
            "tool. Give your best final answer now, from what you have learned so far.")})
        protocol = protocol_for(state.mode)
        estimate = self._prompt_estimate(state, protocol, True)
        room = (None if self.limits.max_total_tokens is None else
                self.limits.max_total_tokens - state.usage.total_tokens - estimate)
        cost_room = self.limits.max_cost is None or (
            self.model.cost(state.usage) + self.model.cost(Usage(
                estimate, self.limits.final_answer_tokens)) <= self.limits.max_cost)
        answer = None
        if (room is None or room >= 16) and cost_room:
            try:
                action, message = yield from self._call_model(state, protocol, True)
            except ModelError:
                action = None
            if action is not None:
                state.messages.append(protocol.assistant_message(message, action))
                answer = action.final_answer if not action.calls else None
        yield self._end(state, limit, answer, forced=answer is not None)

    # ------------------------------------------------------------------------ helpers
    def _opening_messages(self, task: str, session_id: str | None,
                          protocol: ToolProtocol) -> list[dict]:
        system = self.instructions
        extra = protocol.system_prompt(self.tools)
        if extra:
            system += "\n\n" + extra
        memory_text = _memory_context(self.memory, task)
        if memory_text:
            system += "\n\n" + memory_text
        history: list[dict] = []
        if self.memory is not None and session_id is not None:
            from llmsys.agent.memory import trim_messages

            history = trim_messages([m for m in self.memory.load_messages(session_id)
                                     if m["role"] != "system"], self.limits.max_history_tokens)
        return [{"role": "system", "content": system}, *history, {"role": "user", "content": task}]

    def _switch_protocol(self, state: _State, mode: str, reason: str) -> None:
        old, new = protocol_for(state.mode), protocol_for(mode)
        system = state.messages[0]["content"]
        old_extra = old.system_prompt(self.tools)
        if old_extra:
            system = system.replace("\n\n" + old_extra, "")
        state.messages[0] = {"role": "system",
                             "content": system + "\n\n" + new.system_prompt(self.tools)}
        state.mode = mode
        self.traces.record(state.run_id, state.step, "mode", {"mode": mode, "reason": reason})

    def _prompt_estimate(self, state: _State, protocol: ToolProtocol, final: bool) -> int:
        """An over-estimate of the next prompt's tokens: the last prompt's exact count plus
        one token per two characters added since (or of everything, before the first call)."""
        if state.last_prompt_tokens:
            return state.last_prompt_tokens + state.chars_since_prompt // 2 + 64
        text = json.dumps(state.messages) + json.dumps(protocol.request(self.tools, final))
        return len(text) // 2 + 64

    def _elapsed(self, state: _State) -> float:
        return time.monotonic() - self._clock[state.run_id]

    def _checkpoint(self, state: _State, status: str) -> None:
        state.elapsed_s = self._elapsed(state)
        self.traces.checkpoint(state.run_id, status, state.to_json(), state.usage.to_dict(),
                               self.model.cost(state.usage))

    def _end(self, state: _State, end_state: EndState, answer: str | None, *,
             forced: bool = False, error: str | None = None) -> Event:
        if end_state is not EndState.AWAITING_APPROVAL:
            self._remember(state, answer, end_state)
        self._checkpoint(state, end_state.value)
        cost = self.model.cost(state.usage)
        self.traces.finish(state.run_id, end_state.value, answer, state.usage.to_dict(), cost)
        if error:
            self.traces.record(state.run_id, state.step, "error", {"error": error}, error=error)
        self._clock.pop(state.run_id, None)  # a resume sets it again
        result = RunResult(state.run_id, answer, end_state, state.step, state.usage, cost,
                           forced, [ToolCall(**c) for c in state.pending], state.session_id,
                           state.tool_calls)
        return Event("end", state.step, {**result.to_dict(), "error": error}, result)

    def _remember(self, state: _State, answer: str | None, end_state: EndState) -> None:
        if self.memory is None:
            return
        if state.session_id is not None:
            self.memory.save_messages(state.session_id,
                                      [m for m in state.messages if m["role"] != "system"])
        self.memory.record_episode(state.task, answer or f"(no answer: {end_state.value})",
                                   session_id=state.session_id)


def _fallback(mode: str) -> str | None:
    return {NativeTools.name: JsonActions.name, JsonActions.name: ReActText.name}.get(mode)


def _canonical(arguments: str | dict) -> str:
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
        return json.dumps(value, sort_keys=True)
    except json.JSONDecodeError:
        return str(arguments)


def _memory_context(memory: Any, task: str) -> str:
    if memory is None:
        return ""
    parts = []
    facts = memory.facts()
    if facts:
        parts.append("Facts you know:\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items()))
    episodes = memory.recall_episodes(task, k=3) if memory.embedder is not None else []
    if episodes:
        parts.append("Relevant past tasks:\n" + "\n".join(
            f"- {e.task} -> {e.outcome}" for e in episodes))
    return "\n\n".join(parts)


def _last_result(events: Iterator[Event]) -> RunResult:
    result = None
    for event in events:
        result = event.result or result
    assert result is not None
    return result
