"""The agent runtime: a tool-using loop over any OpenAI-compatible chat endpoint.

    from llmsys.agent import Agent, ChatModel, Limits, calculator_tool, tool

    agent = Agent(ChatModel("http://127.0.0.1:8000/v1", "llmsys-tiny-chat"),
                  tools=[calculator_tool], limits=Limits(max_steps=6))
    print(agent.run("What is 12 * 7?").final_answer)

Files: agent.py (the loop, guards, approval, resume), protocols.py (native / JSON / ReAct
tool calling), tools.py (`@tool`, schemas, validation), chat_model.py (the endpoint),
trace.py (SQLite traces), memory.py (long-term memory), sandbox.py (the `python` tool),
web.py (`web_fetch`, `web_search`), calculator.py, scripted.py (a scripted chat server for
tests and demos), bfcl.py (BFCL data), cli.py (`llmsys agent run` / `trace`).
"""

from llmsys.agent.agent import Agent, EndState, Event, Limits, RunResult
from llmsys.agent.calculator import calculator_tool
from llmsys.agent.chat_model import ChatModel, ModelError, Usage
from llmsys.agent.tools import Tool, ToolArgumentError, tool

__all__ = ["Agent", "ChatModel", "EndState", "Event", "Limits", "ModelError", "RunResult",
           "Tool", "ToolArgumentError", "Usage", "calculator_tool", "tool"]
