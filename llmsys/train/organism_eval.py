"""The bundled model's evaluation: held-out tool-use tasks through a real OpenAI-style server.

    llmsys eval organism --model models/llmsys-tiny-chat     # starts `llmsys serve` in-process
    llmsys eval organism --base-url http://127.0.0.1:8000/v1 --served-model NAME

Each task (`organism_data.eval_tasks`: held-out entities, phrasings and numbers) runs as an
agent would run it, with the official `openai` client: ask with `tools` (calculator, search),
`tool_choice="auto"`, greedy decoding; validate every tool call the server parsed (known name,
arguments a JSON object that validates against the tool's schema) and execute it, send the
result back, and repeat until the model answers in text or `max_turns` model calls are used.
A `<tool_call>` the server could not parse (left in the text) counts as an invalid call.

Reported: the valid tool-call rate, final-answer accuracy per task kind, whether the expected
tools were called in order, and declines (correct ones on the `decline` tasks, wrong ones
elsewhere). `evaluate(...)` returns the report as a dict; the CLI also writes it as JSON.
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from llmsys.train.organism_data import (
    EVAL_KINDS,
    TOOLS,
    EvalTask,
    KnowledgeBase,
    answer_is_correct,
    is_decline,
    run_tool,
)

_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@dataclass
class TaskResult:
    kind: str
    correct: bool = False
    final: str | None = None
    tools_called: list[str] = field(default_factory=list)
    calls: int = 0
    valid_calls: int = 0
    declined: bool = False
    error: str | None = None  # a transport or server error (the task counts as wrong)
    expected: str | None = None
    usage: int | None = None  # tokens (agent runs)


def check_call(name: str, arguments: str) -> tuple[dict | None, str | None]:
    """(parsed arguments, None) for a valid call, else (None, what is wrong)."""
    import jsonschema

    if name not in _SCHEMAS:
        return None, f"unknown tool {name!r}; available: {sorted(_SCHEMAS)}"
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError as e:
        return None, f"arguments are not JSON ({e.msg})"
    try:
        jsonschema.validate(args, _SCHEMAS[name])
    except jsonschema.ValidationError as e:
        return None, f"arguments do not match the schema: {e.message}"
    return args, None


def run_task(client, model: str, task: EvalTask, kb: KnowledgeBase, *, max_turns: int = 4,
             max_tokens: int = 96) -> TaskResult:
    """Run one task to its final answer (or to the turn budget)."""
    import openai

    result = TaskResult(task.kind, expected=task.expected)
    messages = [dict(m) for m in task.messages]
    try:
        for _ in range(max_turns):
            reply = client.chat.completions.create(
                model=model, messages=messages, tools=TOOLS, tool_choice="auto",
                temperature=0.0, max_tokens=max_tokens).choices[0].message
            calls = reply.tool_calls or []
            text = reply.content or ""
            if "<tool_call>" in text:  # the model tried to call a tool in a broken syntax
                result.calls += 1
            if not calls:
                result.final = text
                break
            messages.append({"role": "assistant", "content": reply.content, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls]})
            for call in calls:
                result.calls += 1
                result.tools_called.append(call.function.name)
                args, problem = check_call(call.function.name, call.function.arguments)
                if problem is None:
                    result.valid_calls += 1
                    output = run_tool(kb, call.function.name, args)
                else:
                    output = f"Error: {problem}"
                messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
    except openai.APIError as e:
        result.error = f"{type(e).__name__}: {e}"
    return _scored(task, result)


def _scored(task: EvalTask, result: TaskResult) -> TaskResult:
    """Mark the final answer: correct (a decline must also call no tool), declined."""
    if result.final is not None:
        result.correct = answer_is_correct(task, result.final) and (
            task.kind != "decline" or not result.tools_called)
        result.declined = is_decline(result.final)
    return result


def evaluate(base_url: str, model: str, tasks: list[EvalTask], kb: KnowledgeBase, *,
             api_key: str = "none", concurrency: int = 8, progress: bool = True) -> dict:
    """Run every task (`concurrency` at once, so the server batches them); return the report."""
    import openai
    from tqdm import tqdm

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(run_task, client, model, t, kb) for t in tasks]
        results = [f.result() for f in tqdm(futures, desc="eval", disable=not progress)]
    return report(tasks, results)


def agent_tools(kb: KnowledgeBase) -> list:
    """The evaluation's tools (same names, descriptions and schemas as TOOLS) as agent Tools."""
    from llmsys.agent.tools import Tool

    def bind(name: str):
        return lambda **arguments: run_tool(kb, name, arguments)

    return [Tool.from_schema(t["function"]["name"], t["function"]["description"],
                             t["function"]["parameters"], bind(t["function"]["name"]))
            for t in TOOLS]


def run_agent_task(agent, task: EvalTask) -> TaskResult:
    """One task through `llmsys.agent.Agent` (its system message is the task's)."""
    result = TaskResult(task.kind, expected=task.expected)
    run = agent.run(task.messages[-1]["content"])
    result.calls = len(run.tool_calls)
    result.tools_called = [c["name"] for c in run.tool_calls]
    result.valid_calls = sum(check_call(c["name"], c["arguments"] if isinstance(c["arguments"], str)
                                        else json.dumps(c["arguments"]))[1] is None
                             for c in run.tool_calls)  # the same check as the direct run
    result.usage = run.usage.total_tokens
    if run.end_state.value == "model_error":
        result.error = "model error"
    result.final = run.final_answer
    return _scored(task, result)


def evaluate_agent(base_url: str, model: str, tasks: list[EvalTask], kb: KnowledgeBase, *,
                   api_key: str = "none", max_steps: int = 4, max_total_tokens: int = 4096,
                   concurrency: int = 8, progress: bool = True) -> dict:
    """The tasks run by the agent (native tool calls, `max_steps` model calls as in `run_task`,
    a token budget per task); the report also gives the largest token use of a task."""
    from tqdm import tqdm

    from llmsys.agent.agent import Agent, Limits
    from llmsys.agent.chat_model import ChatModel

    system = {m["content"] for t in tasks for m in t.messages if m["role"] == "system"}
    if len(system) > 1:
        raise ValueError("the tasks must share one system message")
    agent = Agent(ChatModel(base_url, model, api_key, max_tokens=96, max_retries=0,
                            timeout_s=300), agent_tools(kb), mode="native",
                  instructions=system.pop() if system else "",
                  limits=Limits(max_steps=max_steps, max_total_tokens=max_total_tokens,
                                final_answer_tokens=96))
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(run_agent_task, agent, t) for t in tasks]
        results = [f.result() for f in tqdm(futures, desc="agent eval", disable=not progress)]
    rep = report(tasks, results)
    rep["max_task_tokens"] = max((r.usage or 0) for r in results)
    rep["token_budget"] = max_total_tokens
    return rep


def report(tasks: list[EvalTask], results: list[TaskResult]) -> dict:
    by_kind: dict[str, list[tuple[EvalTask, TaskResult]]] = defaultdict(list)
    for task, result in zip(tasks, results, strict=True):
        by_kind[task.kind].append((task, result))
    calls = sum(r.calls for r in results)
    kinds = {}
    for kind in [k for k in EVAL_KINDS if k in by_kind]:
        pairs = by_kind[kind]
        kinds[kind] = {
            "tasks": len(pairs),
            "accuracy": sum(r.correct for _, r in pairs) / len(pairs),
            "expected_tools_rate": sum(r.tools_called == t.expected_tools
                                       for t, r in pairs) / len(pairs),
            "declined": sum(r.declined for _, r in pairs),
            "errors": sum(r.error is not None for _, r in pairs),
        }
    answerable = [r for r in results if r.kind not in ("decline", "greeting")]
    return {
        "tasks": len(results),
        "tool_calls": calls,
        "valid_tool_call_rate": sum(r.valid_calls for r in results) / calls if calls else None,
        "kinds": kinds,
        "wrong_declines": sum(r.declined for r in answerable),
        "results": [asdict(r) for r in results],
    }


def format_report(rep: dict) -> str:
    """The report as a markdown table."""
    rate = rep["valid_tool_call_rate"]
    lines = [f"valid tool calls: {rate:.1%} of {rep['tool_calls']}" if rate is not None
             else "valid tool calls: no calls made", "",
             "| task kind | tasks | final-answer accuracy | expected tools called | declined |",
             "|---|---:|---:|---:|---:|"]
    for kind, k in rep["kinds"].items():
        lines.append(f"| {kind} | {k['tasks']} | {k['accuracy']:.1%} | "
                     f"{k['expected_tools_rate']:.1%} | {k['declined']} |")
    lines.append(f"\nwrong declines on answerable tasks: {rep['wrong_declines']}")
    return "\n".join(lines)
