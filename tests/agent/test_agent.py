"""The agent loop against a scripted OpenAI-compatible server (real HTTP, official client):
every tool-calling mode, error path and guard, parallel calls, approval pause/resume, crash
and resume, traces and the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading

import pytest

from llmsys.agent.agent import Agent, EndState, Limits
from llmsys.agent.calculator import calculator_tool
from llmsys.agent.chat_model import ChatModel
from llmsys.agent.scripted import ScriptedChatServer
from llmsys.agent.tools import tool
from llmsys.agent.trace import TraceStore


@tool
def boom(reason: str) -> str:
    """Always fails.

    Args:
        reason: Why.
    """
    raise RuntimeError(f"exploded: {reason}")


def agent_for(server: ScriptedChatServer, tools=(calculator_tool,), **kwargs) -> Agent:
    return Agent(ChatModel(server.base_url, "scripted"), list(tools), **kwargs)


def final_or_call(call: tuple[str, dict | str]):
    """A reply function: the call, unless the request forbids tools (the last call at a
    limit), then a final answer."""
    def reply(body: dict) -> dict:
        if body.get("tool_choice") == "none":
            return {"content": "best guess"}
        return {"tool_calls": [call]}
    return reply


def endless_calls(expression: str = "1 + {i}", final: str = "partial"):
    """A reply function for a model that never stops calling the calculator (a new expression
    each time), and answers `final` when tools are forbidden (the last call at a limit)."""
    counter = itertools.count()

    def reply(body: dict) -> dict:
        if body.get("tool_choice") == "none":
            return {"content": final}
        return {"tool_calls": [("calculator", {"expression": expression.format(
            i=next(counter))})]}
    return reply


def tool_messages(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


# ----------------------------------------------------------------------------- native

def test_native_call_then_answer() -> None:
    with ScriptedChatServer([{"tool_calls": [("calculator", {"expression": "6 * 7"})]},
                             {"content": "It is 42."}]) as server:
        result = agent_for(server).run("What is 6 * 7?")
    assert result.end_state is EndState.FINAL_ANSWER and result.final_answer == "It is 42."
    assert result.steps == 2 and result.usage.calls == 2 and not result.forced_final
    first, second = server.requests
    assert first["tools"][0]["function"]["name"] == "calculator"
    assert first["tool_choice"] == "auto"
    assert tool_messages(second) == ["42"]
    assert result.tool_calls == [{"name": "calculator", "arguments": '{"expression": "6 * 7"}',
                                  "result": "42", "error": False}]


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"expression": "2 +', "not valid JSON"),
    ({"expression": 7}, "field 'expression': 7 is not of type 'string'"),
    ({}, "missing required field 'expression'"),
    ({"expression": "1", "extra": 1}, "'extra' was unexpected"),
])
def test_bad_arguments_go_back_to_the_model(arguments, expected: str) -> None:
    with ScriptedChatServer([{"tool_calls": [("calculator", arguments)]},
                             {"tool_calls": [("calculator", {"expression": "1 + 1"})]},
                             {"content": "2"}]) as server:
        result = agent_for(server).run("1 + 1?")
    assert result.end_state is EndState.FINAL_ANSWER and result.final_answer == "2"
    error = tool_messages(server.requests[1])[0]
    assert error.startswith("Error: ") and expected in error
    assert tool_messages(server.requests[2])[-1] == "2"


def test_unknown_tool_and_tool_exception_are_observations() -> None:
    with ScriptedChatServer([{"tool_calls": [("weather", {"city": "Paris"})]},
                             {"tool_calls": [("boom", {"reason": "test"})]},
                             {"content": "sorry"}]) as server:
        result = agent_for(server, tools=(calculator_tool, boom),
                           limits=Limits(max_retries_per_step=5)).run("weather?")
    assert result.end_state is EndState.FINAL_ANSWER
    unknown = tool_messages(server.requests[1])[0]
    assert "unknown tool 'weather'" in unknown and "['boom', 'calculator']" in unknown
    assert tool_messages(server.requests[2])[1] == (
        "Error: boom failed: RuntimeError: exploded: test")


def test_retry_cap_ends_the_run() -> None:
    script = final_or_call(("calculator", "{broken"))
    with ScriptedChatServer(script) as server:
        result = agent_for(server, limits=Limits(max_retries_per_step=2)).run("1 + 1?")
    assert result.end_state is EndState.TOO_MANY_ERRORS
    assert result.steps == 4  # three failed attempts, then the last call
    assert result.forced_final and result.final_answer == "best guess"
    assert server.requests[-1]["tool_choice"] == "none"
    assert "reached a limit (too many errors)" in server.requests[-1]["messages"][-1]["content"]


def test_parallel_calls_run_at_the_same_time() -> None:
    barrier = threading.Barrier(3, timeout=10)  # three calls must be inside at once

    @tool
    def wait_for_others(name: str) -> str:
        """Meets the other calls.

        Args:
            name: Who.
        """
        barrier.wait()
        return f"{name} met"

    calls = [("wait_for_others", {"name": n}) for n in ("a", "b", "c")]
    with ScriptedChatServer([{"tool_calls": calls}, {"content": "done"}]) as server:
        result = agent_for(server, tools=(wait_for_others,)).run("meet")
    assert result.final_answer == "done"
    assert tool_messages(server.requests[1]) == ["a met", "b met", "c met"]  # in call order
    ids = [m["tool_call_id"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert len(set(ids)) == 3


def test_calls_written_as_text_are_understood() -> None:
    text = 'Let me compute.\n<tool_call>{"name": "calculator", "arguments": ' \
           '{"expression": "3 * 3"}}</tool_call>'
    with ScriptedChatServer([{"content": text}, {"content": "9"}]) as server:
        result = agent_for(server).run("3 * 3?")
    assert result.final_answer == "9" and tool_messages(server.requests[1]) == ["9"]


# ----------------------------------------------------------------------------- guards

def test_repeated_call_guard() -> None:
    with ScriptedChatServer(final_or_call(("calculator", {"expression": "1 + 1"}))) as server:
        result = agent_for(server, limits=Limits(max_repeated_calls=3)).run("loop")
    assert result.end_state is EndState.REPEATED_CALL
    assert len(result.tool_calls) == 3 and result.forced_final
    assert result.final_answer == "best guess"


def test_no_progress_guard() -> None:  # new arguments each time, the same observation
    with ScriptedChatServer(endless_calls("0 * {i}", "giving up")) as server:
        result = agent_for(server, limits=Limits(max_stale_steps=2)).run("loop")
    assert result.end_state is EndState.NO_PROGRESS
    assert [c["result"] for c in result.tool_calls] == ["0", "0", "0"]


def test_step_budget() -> None:
    with ScriptedChatServer(endless_calls()) as server:
        result = agent_for(server, limits=Limits(max_steps=4)).run("count")
    assert result.end_state is EndState.MAX_STEPS and result.final_answer == "partial"
    assert len(result.tool_calls) == 4 and result.steps == 5  # the last call is recorded too
    assert len(server.requests) == 5


@pytest.mark.parametrize("budget", [600, 1500, 4000])
def test_token_budget_is_never_exceeded(budget: int) -> None:
    with ScriptedChatServer(endless_calls()) as server:
        model = ChatModel(server.base_url, "scripted", max_tokens=64)
        agent = Agent(model, [calculator_tool], limits=Limits(
            max_steps=100, max_total_tokens=budget, final_answer_tokens=32))
        result = agent.run("count for a long time")
    assert result.end_state is EndState.TOKEN_BUDGET
    assert result.usage.total_tokens <= budget


def test_cost_budget() -> None:
    with ScriptedChatServer(endless_calls("2 + {i}")) as server:
        model = ChatModel(server.base_url, "scripted", max_tokens=64, prompt_price=1.0,
                          completion_price=2.0)  # per million tokens
        result = Agent(model, [calculator_tool], limits=Limits(
            max_steps=100, max_cost=0.003, final_answer_tokens=32)).run("spend")
    assert result.end_state is EndState.COST_BUDGET
    assert 0 < result.cost <= 0.003


def test_wall_clock_timeout_stops_a_hung_tool() -> None:
    release = threading.Event()

    @tool
    def hang(x: int) -> str:
        """Waits for a release that does not come in time.

        Args:
            x: Anything.
        """
        release.wait(30)
        return "late"

    try:
        with ScriptedChatServer(final_or_call(("hang", {"x": 1}))) as server:
            result = agent_for(server, tools=(hang,), limits=Limits(timeout_s=0.5)).run("hang")
    finally:
        release.set()
    assert result.end_state is EndState.TIMEOUT
    assert result.tool_calls[0]["result"] == "Error: hang did not finish in time"
    assert result.final_answer == "best guess"


def test_limits_and_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="Limits.max_steps must be >= 1, got 0"):
        Limits(max_steps=0)
    with pytest.raises(ValueError, match="Limits.max_total_tokens must be > 0"):
        Limits(max_total_tokens=-5)
    model = ChatModel("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ValueError, match="tool names must be unique"):
        Agent(model, [calculator_tool, calculator_tool])
    with pytest.raises(ValueError, match="unknown tool-calling mode 'xml'"):
        Agent(model, mode="xml")
    with pytest.raises(ValueError, match="task must be a non-empty string"):
        Agent(model).run("  ")
    with pytest.raises(ValueError, match="base_url must start with http"):
        ChatModel("localhost:8000", "m")


def test_unreachable_endpoint_ends_with_model_error() -> None:
    model = ChatModel("http://127.0.0.1:9/v1", "m", max_retries=0, timeout_s=2)
    result = Agent(model, [calculator_tool]).run("hi")
    assert result.end_state is EndState.MODEL_ERROR and result.final_answer is None


# ------------------------------------------------------------------------ other modes

def test_json_mode() -> None:
    replies = [{"content": json.dumps({"thought": "compute", "action": {
        "tool": "calculator", "arguments": {"expression": "5 * 5"}}})},
        {"content": "not json at all"},
        {"content": '```json\n{"thought": "done", "action": {"final_answer": "25"}}\n```'}]
    with ScriptedChatServer(replies) as server:
        result = agent_for(server, mode="json").run("5 * 5?")
    assert result.end_state is EndState.FINAL_ANSWER and result.final_answer == "25"
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert "tools" not in server.requests[0]
    tools_in_schema = [c["properties"].get("tool", {}).get("const")
                       for c in schema["properties"]["action"]["anyOf"]]
    assert tools_in_schema == ["calculator", None]
    assert server.requests[1]["messages"][-1] == {"role": "user",
                                                  "content": "Result of calculator: 25"}
    assert "not a JSON object" in server.requests[2]["messages"][-1]["content"]


def test_react_mode_is_tolerant() -> None:
    replies = [{"content": "thought: I should compute\n ACTION:  calculator\n"
                           "action input: ```{'expression': '7 - 2'}```\nObservation: 99"},
               {"content": "Thought: got it\nFinal Answer: 5"}]
    with ScriptedChatServer(replies) as server:
        result = agent_for(server, mode="react").run("7 - 2?")
    assert result.final_answer == "5"
    assert server.requests[0]["stop"] == ["\nObservation:"]
    assert "Action Input" in server.requests[0]["messages"][0]["content"]
    assert server.requests[1]["messages"][-1] == {"role": "user", "content": "Observation: 5"}


@pytest.mark.parametrize("mode", ["json", "react"])
def test_a_trained_call_syntax_is_understood_in_text_modes(mode: str) -> None:
    tagged = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "8 * 9"}}\n' \
             '</tool_call>'
    final = ('{"thought": "", "action": {"final_answer": "72"}}' if mode == "json"
             else "Final Answer: 72")
    with ScriptedChatServer([{"content": tagged}, {"content": final}]) as server:
        result = agent_for(server, mode=mode).run("8 * 9?")
    assert result.final_answer == "72"
    assert result.tool_calls[0]["result"] == "72"


def test_auto_mode_falls_back_when_the_endpoint_refuses() -> None:
    def reply(body: dict) -> dict:
        if "tools" in body:
            return {"status": 400, "message": "tools are not supported"}
        if "response_format" in body:
            return {"status": 400, "message": "response_format is not supported"}
        if any(m["role"] == "user" and m["content"].startswith("Observation")
               for m in body["messages"]):
            return {"content": "Final Answer: 4"}
        return {"content": 'Action: calculator\nAction Input: {"expression": "2 + 2"}'}

    with ScriptedChatServer(reply) as server:
        events = list(agent_for(server).stream("2 + 2?"))
    result = events[-1].result
    assert result.final_answer == "4" and result.end_state is EndState.FINAL_ANSWER
    switches = [e.data["switched_mode"] for e in events if "switched_mode" in e.data]
    assert switches == ["json", "react"]
    assert result.steps == 2  # refused requests are not steps


# ---------------------------------------------------------------- approval, resume, trace

@tool(requires_approval=True)
def delete_file(path: str) -> str:
    """Deletes a file (pretend).

    Args:
        path: Which file.
    """
    return f"deleted {path}"


@pytest.mark.parametrize("approve", [True, False])
def test_approval_pauses_and_resumes_in_a_new_agent(tmp_path, approve: bool) -> None:
    db = tmp_path / "agent.db"
    script = [{"tool_calls": [("delete_file", {"path": "a.txt"})]}, {"content": "finished"}]
    with ScriptedChatServer(script) as server:
        paused = agent_for(server, tools=(delete_file,), trace_db=db).run("delete a.txt")
        assert paused.end_state is EndState.AWAITING_APPROVAL and paused.final_answer is None
        assert [c.name for c in paused.pending] == ["delete_file"]
        again = agent_for(server, tools=(delete_file,), trace_db=db)  # as after a restart
        result = again.resume(paused.run_id, approve=approve)
    assert result.end_state is EndState.FINAL_ANSWER and result.final_answer == "finished"
    observed = tool_messages(server.requests[1])[0]
    assert observed == ("deleted a.txt" if approve else
                        "Error: the user did not approve this call of delete_file.")
    with pytest.raises(ValueError, match="ended"):
        again.resume(paused.run_id, approve=True)


def test_approval_applies_to_the_calls_that_ask_for_it(tmp_path) -> None:
    script = [{"tool_calls": [("calculator", {"expression": "1 + 2"}),
                              ("delete_file", {"path": "b.txt"})]}, {"content": "ok"}]
    with ScriptedChatServer(script) as server:
        agent = agent_for(server, tools=(calculator_tool, delete_file), trace_db=tmp_path / "t.db")
        paused = agent.run("add, then delete")
        assert [c.name for c in paused.pending] == ["calculator", "delete_file"]
        deny = {c.id: False for c in paused.pending if c.name == "delete_file"}
        result = agent.resume(paused.run_id, approve=deny)
    assert result.final_answer == "ok"
    assert tool_messages(server.requests[1]) == [
        "3", "Error: the user did not approve this call of delete_file."]


def test_resume_without_a_decision_is_refused(tmp_path) -> None:
    script = [{"tool_calls": [("delete_file", {"path": "a.txt"})]}]
    with ScriptedChatServer(script) as server:
        agent = agent_for(server, tools=(delete_file,), trace_db=tmp_path / "t.db")
        paused = agent.run("delete")
        with pytest.raises(ValueError, match="waits for approval of \\['delete_file'\\]"):
            agent.resume(paused.run_id)


_CRASHING_RUN = """
import os, sys
from llmsys.agent.agent import Agent
from llmsys.agent.calculator import calculator_tool
from llmsys.agent.chat_model import ChatModel
from llmsys.agent.tools import tool

@tool
def fragile(x: int) -> str:
    '''Crashes the process the first time.

    Args:
        x: Anything.
    '''
    if not os.path.exists(sys.argv[3]):
        open(sys.argv[3], "w").close()
        os._exit(3)
    return f"fragile ok {x}"

agent = Agent(ChatModel(sys.argv[1], "scripted"), [calculator_tool, fragile], trace_db=sys.argv[2])
agent.run("crash test")
"""


def test_crash_and_resume(tmp_path) -> None:
    db, marker = tmp_path / "agent.db", tmp_path / "crashed"
    script = [{"tool_calls": [("calculator", {"expression": "10 + 1"})]},
              {"tool_calls": [("fragile", {"x": 1})]},  # the process dies running this
              {"tool_calls": [("fragile", {"x": 2})]},  # after the resume
              {"content": "survived"}]
    with ScriptedChatServer(script) as server:
        crashed = subprocess.run([sys.executable, "-c", _CRASHING_RUN, server.base_url, str(db),
                                  str(marker)], capture_output=True, text=True, timeout=120)
        assert crashed.returncode == 3, crashed.stderr
        store = TraceStore(db)
        (run,) = store.runs()
        assert run["state"] == "running"

        from llmsys.agent.tools import Tool

        fragile = Tool.from_schema("fragile", "fine now", {
            "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            lambda x: f"fragile ok {x}")
        result = agent_for(server, tools=(calculator_tool, fragile),
                           trace_db=db).resume(run["run_id"])
    assert result.end_state is EndState.FINAL_ANSWER and result.final_answer == "survived"
    # The completed step was not redone: the resumed conversation holds its result once.
    messages = server.requests[-1]["messages"]
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["11", "fragile ok 2"]
    assert [c["name"] for c in result.tool_calls] == ["calculator", "fragile"]
    kinds = [s["kind"] for s in store.steps(run["run_id"])]
    assert kinds == ["model", "tool", "model", "model", "tool", "model"]
    assert store.run(run["run_id"])["state"] == "final_answer"


def test_trace_records_every_step_and_exports_jsonl(tmp_path, capsys) -> None:
    from llmsys.cli import main

    db = tmp_path / "agent.db"
    script = [{"tool_calls": [("calculator", {"expression": "2 * 3"}),
                              ("calculator", {"expression": "bad("})]},
              {"content": "6"}]
    with ScriptedChatServer(script) as server:
        result = agent_for(server, trace_db=db).run("2 * 3?")
    store = TraceStore(db)
    steps = store.steps(result.run_id)
    assert [s["kind"] for s in steps] == ["model", "tool", "tool", "model"]
    assert steps[0]["prompt_tokens"] > 0 and steps[0]["latency_s"] > 0
    assert steps[2]["error"].startswith("Error: invalid expression")
    assert main(["agent", "trace", result.run_id, "--db", str(db)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["type"] == "run" and lines[0]["final_answer"] == "6"
    assert [line["kind"] for line in lines[1:]] == ["model", "tool", "tool", "model"]
    assert main(["agent", "trace", "nope", "--db", str(db)]) == 2
    assert main(["agent", "trace", "nope", "--db", str(tmp_path / "missing.db")]) == 2


def test_cli_run_streams_and_prints_json(tmp_path) -> None:
    script = [{"tool_calls": [("calculator", {"expression": "12 * 7"})]}, {"content": "84"},
              {"tool_calls": [("calculator", {"expression": "12 * 7"})]}, {"content": "84"}]
    with ScriptedChatServer(script) as server:
        args = ["-m", "llmsys.cli", "agent", "run", "What is 12 * 7?", "--base-url",
                server.base_url, "--model", "scripted", "--tools", "calculator", "--db",
                str(tmp_path / "a.db")]
        streamed = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                                  timeout=120)
        as_json = subprocess.run([sys.executable, *args, "--json"], capture_output=True,
                                 text=True, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    assert "call calculator" in streamed.stdout and "calculator → 84" in streamed.stdout
    assert streamed.stdout.rstrip().endswith("84")
    result = json.loads(as_json.stdout)
    assert result["final_answer"] == "84" and result["end_state"] == "final_answer"
    assert result["steps"] == 2 and result["usage"]["total_tokens"] > 0
    bad = subprocess.run([sys.executable, "-m", "llmsys.cli", "agent", "run", "x", "--base-url",
                          server.base_url, "--model", "m", "--tools", "teleport"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown tool set 'teleport'" in bad.stderr
    down = subprocess.run([sys.executable, "-m", "llmsys.cli", "agent", "run", "x", "--base-url",
                           "http://127.0.0.1:9/v1", "--model", "m", "--db",
                           str(tmp_path / "b.db")], capture_output=True, text=True, timeout=120)
    assert down.returncode == 2 and "the model endpoint failed" in down.stderr
    assert "Traceback" not in down.stderr


def test_cli_trace_of_a_file_that_is_not_a_trace_db_is_one_line(tmp_path, capsys) -> None:
    from llmsys.cli import main
    bad = tmp_path / "notes.db"
    bad.write_text("not sqlite\n")
    assert main(["agent", "trace", "run-1", "--db", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "notes.db is not a usable trace file" in err and "Traceback" not in err


class WordEmbedder:
    """A tiny deterministic embedder (hashed bag of words) so these tests need no model."""

    dim = 64
    name = "words"

    def embed(self, texts: list[str]):
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_session_memory_survives_a_restart(tmp_path) -> None:
    from llmsys.agent.memory import Memory, memory_tools

    db = tmp_path / "agent.db"
    with ScriptedChatServer([
            {"tool_calls": [("remember_fact", {"key": "user name", "value": "Ada"})]},
            {"content": "Noted, Ada."}]) as server:
        memory = Memory(db, embedder=WordEmbedder())
        first = agent_for(server, tools=memory_tools(memory), memory=memory).run(
            "My name is Ada.", session_id="s1")
        memory.close()
    assert first.final_answer == "Noted, Ada." and first.tool_calls[0]["error"] is False
    with ScriptedChatServer([{"content": "You are Ada."}]) as server:
        memory = Memory(db, embedder=WordEmbedder())  # a new process would do the same
        second = agent_for(server, tools=memory_tools(memory), memory=memory).run(
            "What is my name?", session_id="s1")
        messages = server.requests[0]["messages"]
    assert second.final_answer == "You are Ada."
    system = messages[0]["content"]
    assert "Facts you know:\n- user name: Ada" in system
    assert "Relevant past tasks:\n- My name is Ada. -> Noted, Ada." in system
    assert [m["content"] for m in messages[1:] if m["role"] == "user"] == [
        "My name is Ada.", "What is my name?"]  # the session's history came back
    assert any(m.get("content") == "Noted, Ada." for m in messages)
    assert [m["content"] for m in memory.load_messages("s1") if m["role"] == "assistant"][-1] \
        == "You are Ada."
    runs = TraceStore(db).runs(session_id="s1")  # traces live in the same file
    assert [r["final_answer"] for r in runs] == ["You are Ada.", "Noted, Ada."]
    memory.close()


def test_scripted_server_reports_a_broken_script_once() -> None:
    from llmsys.agent.chat_model import ChatModel, ModelError

    with ScriptedChatServer(lambda body: 1 / 0) as server:
        with pytest.raises(ModelError, match="scripted reply failed: ZeroDivisionError") as e:
            ChatModel(server.base_url, "scripted").complete([{"role": "user", "content": "hi"}])
        assert e.value.status == 400 and len(server.requests) == 1      # not retried
    with ScriptedChatServer([]) as server:
        with pytest.raises(ModelError, match="script exhausted: request 1"):
            ChatModel(server.base_url, "scripted").complete([{"role": "user", "content": "hi"}])
        assert len(server.requests) == 1
