"""A scripted OpenAI-compatible chat server: a real HTTP endpoint that replays given replies.

    with ScriptedChatServer([{"tool_calls": [("calculator", {"expression": "2 + 2"})]},
                             {"content": "4"}]) as server:
        agent = Agent(ChatModel(server.base_url, "scripted"), tools=[calculator])
        agent.run("What is 2 + 2?")
        server.requests  # every request body received, in order

It simulates a model for agent tests and demos (the agent talks to it with the official
`openai` client, over loopback HTTP). Each reply is a dict with `content` and/or
`tool_calls` (a list of (name, arguments) pairs; arguments a dict or raw text, so broken
JSON can be scripted), or `{"status": 400, "message": ...}` for an error answer, or a
function of the request body returning such a dict. Usage is counted as about one token
per four characters. A request after the script has run out gets a 500 naming the count.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llmsys.agent.memory import approx_tokens

Reply = dict | Callable[[dict], dict]


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

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def _next_reply(self, body: dict) -> dict:
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
        if callable(self.script):
            return self.script(body)
        if index >= len(self.script):
            return {"status": 500, "message": f"script exhausted: request {index + 1} but only "
                                              f"{len(self.script)} replies scripted"}
        reply = self.script[index]
        return reply(body) if callable(reply) else reply

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
