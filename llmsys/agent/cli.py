"""`llmsys agent …`: run an agent against any OpenAI-compatible endpoint, read its traces.

    llmsys agent run "What is 12 * 7?" --base-url http://127.0.0.1:8000/v1 --model NAME \\
        --tools calculator,python,web [--mode auto|native|json|react] [--json]
    llmsys agent trace RUN_ID [--db agent.db]        # the run's steps as JSON lines

`run` streams each step (model calls, tool calls and results) and ends with the final answer;
`--json` prints only the final `RunResult` as one JSON object. Traces, memory and sessions
live in the SQLite file given by `--db`. Tools: calculator, python (sandboxed), web
(web_fetch, plus web_search when --searx-url is given), memory (facts, notes, episodes),
rag (`search` over a store made by `llmsys rag ingest`, given as --rag-db FILE).
"""

from __future__ import annotations

import argparse
import json
import sys

from llmsys.rag.cli import user_errors  # store, embeddings and endpoint errors: one line

TOOL_SETS = ("calculator", "python", "web", "memory", "rag")


def add_agent_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run a tool-using agent; show its traces")
    agent = p.add_subparsers(dest="agent_command", required=True)
    r = agent.add_parser("run", help="run one task, streaming the steps")
    r.add_argument("task")
    r.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint (…/v1)")
    r.add_argument("--model", required=True, help="model id at the endpoint")
    r.add_argument("--api-key", default="none")
    r.add_argument("--tools", default="calculator",
                   help=f"comma-separated, from {', '.join(TOOL_SETS)} (or 'none')")
    r.add_argument("--mode", default="auto", choices=("auto", "native", "json", "react"))
    r.add_argument("--instructions", default=None, help="system instructions")
    r.add_argument("--max-steps", type=int, default=10)
    r.add_argument("--max-tokens", type=int, default=None, help="token budget of the run")
    r.add_argument("--timeout", type=float, default=None, help="wall-clock limit (seconds)")
    r.add_argument("--db", default="agent.db", help="SQLite file for traces and memory")
    r.add_argument("--session", default=None, help="continue this session (needs memory)")
    r.add_argument("--searx-url", default=None, help="SearxNG endpoint for web_search")
    r.add_argument("--rag-db", default=None,
                   help="store file for the rag tool's search (from `llmsys rag ingest`)")
    r.add_argument("--embed-base-url", default=None,
                   help="embeddings endpoint the --rag-db store was made with (default MiniLM)")
    r.add_argument("--embed-model", default=None)
    r.add_argument("--embed-api-key", default="none")
    r.add_argument("--yes", action="store_true", help="approve every tool call that asks")
    r.add_argument("--json", action="store_true", help="print only the RunResult as JSON")
    r.set_defaults(func=user_errors(cmd_agent_run))
    t = agent.add_parser("trace", help="print a run's trace as JSON lines")
    t.add_argument("run_id")
    t.add_argument("--db", default="agent.db")
    t.set_defaults(func=user_errors(cmd_agent_trace))


def _rag_search(args: argparse.Namespace):
    """The `search` tool over a RAG store file (hybrid retrieval with feedback)."""
    from pathlib import Path

    if not args.rag_db or not Path(args.rag_db).is_file():
        raise ValueError(f"--tools rag needs --rag-db FILE, a store made by `llmsys rag "
                         f"ingest`; got {args.rag_db!r}")
    from llmsys.rag.cli import store_at
    from llmsys.rag.feedback import Feedback
    from llmsys.rag.retrieval import Retriever
    from llmsys.rag.search_tool import rag_search_tool

    store = store_at(args.rag_db, args.embed_base_url, args.embed_model, args.embed_api_key)
    return rag_search_tool(Retriever(store, "hybrid", feedback=Feedback()))


def _tools(names: list[str], args: argparse.Namespace):
    db, session, searx_url = args.db, args.session, args.searx_url
    tools, memory = [], None
    for name in names:
        if name == "calculator":
            from llmsys.agent.calculator import calculator_tool

            tools.append(calculator_tool)
        elif name == "python":
            from llmsys.agent.sandbox import python_tool

            tools.append(python_tool())
        elif name == "web":
            from llmsys.agent.web import SearxNGSearch, web_fetch_tool, web_search_tool

            tools.append(web_fetch_tool())
            if searx_url:
                tools.append(web_search_tool(SearxNGSearch(searx_url)))
        elif name == "memory":
            from llmsys.agent.memory import Memory, MiniLMEmbedder, memory_tools

            memory = Memory(db, embedder=MiniLMEmbedder())
            tools += memory_tools(memory, session_id=session)
        elif name == "rag":
            tools.append(_rag_search(args))
        else:
            raise ValueError(f"unknown tool set {name!r}; choose from {', '.join(TOOL_SETS)}")
    return tools, memory


def cmd_agent_run(args: argparse.Namespace) -> None:
    from llmsys.agent.agent import DEFAULT_INSTRUCTIONS, Agent, EndState, Limits
    from llmsys.agent.chat_model import ChatModel

    names = [] if args.tools == "none" else [n.strip() for n in args.tools.split(",")
                                             if n.strip()]
    tools, memory = _tools(names, args)
    if args.session and memory is None:
        raise ValueError("--session needs the memory tools (--tools ...,memory)")
    limits = Limits(max_steps=args.max_steps, max_total_tokens=args.max_tokens,
                    timeout_s=args.timeout)
    agent = Agent(ChatModel(args.base_url, args.model, args.api_key), tools, limits=limits,
                  mode=args.mode, memory=memory, trace_db=args.db,
                  instructions=args.instructions or DEFAULT_INSTRUCTIONS)
    events = agent.stream(args.task, session_id=args.session)
    error = None
    while True:
        result = None
        for event in events:
            if not args.json:
                _print_event(event)
            result = event.result or result
            error = event.data.get("error") if event.kind == "end" else error
        if result is None or result.end_state is not EndState.AWAITING_APPROVAL:
            break
        events = agent.resume_stream(result.run_id, _ask_approval(result.pending, args.yes))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    if result.end_state is EndState.MODEL_ERROR:  # exit 2 with the endpoint's message
        raise ValueError(f"the model endpoint failed: {error}")


def _ask_approval(pending, yes: bool) -> dict[str, bool]:
    decisions = {}
    for call in pending:
        if yes:
            decisions[call.id] = True
        elif sys.stdin.isatty():
            print(f"run {call.name}({call.arguments})? [y/N] ", end="", file=sys.stderr,
                  flush=True)
            try:
                answer = input().strip().lower()
            except EOFError:  # Ctrl-D: no
                answer = ""
            decisions[call.id] = answer in ("y", "yes")
        else:
            decisions[call.id] = False
    return decisions


def _print_event(event) -> None:
    data = event.data
    if event.kind == "model":
        if "switched_mode" in data:
            print(f"[{event.step}] endpoint refused the mode; switching to {data['switched_mode']}")
        elif data.get("error"):
            print(f"[{event.step}] unparseable reply: {data['error']}")
        elif data["calls"]:
            if data.get("thought"):
                print(f"[{event.step}] thought: {data['thought']}")
            for call in data["calls"]:
                print(f"[{event.step}] call {call['name']}({call['arguments']})")
    elif event.kind == "tool":
        text = data["result"] if len(data["result"]) < 500 else data["result"][:500] + " …"
        print(f"[{event.step}] {data['call']['name']} → {text}")
    elif event.kind == "limit":
        print(f"[{event.step}] limit reached: {data['limit']}")
    elif event.kind == "approval":
        print(f"[{event.step}] waiting for approval of {[c['name'] for c in data['calls']]}")
    elif event.kind == "end":
        usage = data["usage"]
        print(f"final answer ({data['end_state']}, {data['steps']} steps, "
              f"{usage['total_tokens']} tokens, run {data['run_id']}):")
        print(data["final_answer"] if data["final_answer"] is not None else "(none)")


def cmd_agent_trace(args: argparse.Namespace) -> None:
    from pathlib import Path

    from llmsys.agent.trace import TraceStore

    if not Path(args.db).is_file():
        raise ValueError(f"no trace database {args.db!r} (give the file `agent run --db` used)")
    store = TraceStore(args.db)
    try:
        store.export_jsonl(args.run_id, sys.stdout)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    finally:
        store.close()
