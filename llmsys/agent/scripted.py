"""A scripted OpenAI-compatible chat server: a real HTTP endpoint that replays given replies.

    with ScriptedChatServer([{"tool_calls": [("calculator", {"expression": "2 + 2"})]},
                             {"content": "4"}]) as server:
        agent = Agent(ChatModel(server.base_url, "scripted"), tools=[calculator])
        agent.run("What is 2 + 2?")
        server.requests  # every request body received, in order

    with ScriptedChatServer([]) as server:         # one server for a whole test module
        with server.play([{"content": "hi"}]) as play:
            ...                                    # play.base_url, play.requests (this block's)

It simulates a model for agent tests and demos (the agent talks to it with the official
`openai` client, over loopback HTTP). Each reply is a dict with `content` and/or
`tool_calls` (a list of (name, arguments) pairs; arguments a dict or raw text, so broken
JSON can be scripted), or `{"status": 400, "message": ...}` for an error answer, or a
function of the request body returning such a dict. Usage is counted as about one token
per four characters. A request after the script has run out, or one whose scripted
function raises, gets a 400 saying so (a 400, so that the client does not retry it).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llmsys.agent.memory import approx_tokens

Reply = dict | Callable[[dict], dict]


@dataclass
class Play:
    """A script played with `ScriptedChatServer.play`: `requests` are those of its block."""

    base_url: str
    all_requests: list[dict]
    start: int
    end: int | None = None

    @property
    def requests(self) -> list[dict]:
        return self.all_requests[self.start:self.end]


class ScriptedChatServer:
    def __init__(self, script: Sequence[Reply] | Callable[[dict], dict], host: str = "127.0.0.1",
                 model: str = "scripted"):
        self.script = script
        self.model = model
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._httpd = ThreadingHTTPServer((host, 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._start = 0                 # index in `requests` of the script's first request

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.02})  # quick shutdown
        self._thread.start()
        return self

    @contextmanager
    def play(self, script: Sequence[Reply] | Callable[[dict], dict]) -> Iterator[Play]:
        """Replay `script` on this running server for the `with` block (one server serves a
        whole test module). Replies are counted from the block's first request."""
        with self._lock:
            self.script, self._start = script, len(self.requests)
        play = Play(self.base_url, self.requests, self._start)
        try:
            yield play
        finally:
            with self._lock:
                play.end, self.script = len(self.requests), []

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def _next_reply(self, body: dict) -> dict:
        with self._lock:
            index = len(self.requests) - self._start
            self.requests.append(body)
            script = self.script
        if not callable(script) and index >= len(script):
            return {"status": 400, "message": f"script exhausted: request {index + 1} but "
                    f"only {len(script)} replies scripted"}
        reply = script if callable(script) else script[index]
        try:
            return reply(body) if callable(reply) else reply
        except Exception as e:  # a broken scripted function: say so, once (no retries)
            return {"status": 400, "message": f"scripted reply failed: {e!r}"}

    def _completion(self, body: dict, reply: dict) -> dict:
        calls = [{"id": f"call_{next(self._counter)}", "type": "function", "function": {
            "name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
            for name, args in reply.get("tool_calls", [])]
        message: dict = {"role": "assistant", "content": reply.get("content")}
        if calls:
            message["tool_calls"] = calls
        prompt = approx_tokens(json.dumps(body.get("messages", [])))
        completion = approx_tokens(json.dumps(message))
        return {"id": f"chatcmpl-{next(self._counter)}", "object": "chat.completion",
                "created": 0, "model": body.get("model", self.model),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "owned_by": "scripted"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                reply = server._next_reply(body)
                if "status" in reply:
                    self._send(reply["status"], {"error": {
                        "message": reply.get("message", "scripted error"),
                        "type": "invalid_request_error", "param": None, "code": None}})
                    return
                self._send(200, server._completion(body, reply))

        return Handler
