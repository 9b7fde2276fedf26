"""A scripted OpenAI-compatible streaming server for the load-generator tests
(started by the `scripted_server` fixture in conftest.py).

It runs under uvicorn on a free loopback port (in a thread) and answers the k-th request it
receives (k counts arrivals, from 0) from a `Script`: the first token `ttft_s[k]` seconds
after the request arrived, then one token every `tpot_s[k]` seconds (on an absolute
schedule, so the delays do not drift), `max_tokens` tokens in all. It can also fail a
request (HTTP 400 / 500, an error event mid-stream, a dropped connection), leave out the
usage chunk, or have no /tokenize. Its tokenizer is one token per whitespace-separated word.
It records what it saw, so tests compare the benchmark's numbers with the schedule.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request  # module level: the route annotations resolve here
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class Script:
    ttft_s: list[float]  # per arrival index (cycled)
    tpot_s: list[float]
    failures: dict[int, str] = field(default_factory=dict)  # k -> "400" | "500" | "stream" | "drop"
    usage: bool = True
    tokenize: bool = True


@dataclass
class Seen:
    """One request as the server saw it."""

    arrival: int
    prompt_tokens: int
    max_tokens: int
    ttft_s: float
    tpot_s: float
    failure: str | None
    body: dict
    authorization: str | None


class ScriptedServer:
    def __init__(self, script: Script):
        self.script = script
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.finished: set[int] = set()  # arrivals whose whole stream was sent
        self.live_streams = 0  # stream generators not yet closed
        self.vocab: dict[str, int] = {}
        self.url = ""
        self.app = self._build_app()

    # -- tokenizer: one token per word
    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids)

    def _build_app(self):
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

        if self.script.tokenize:
            @app.post("/tokenize")
            async def tokenize(request: Request):
                tokens = self.encode((await request.json())["prompt"])
                return {"tokens": tokens, "count": len(tokens)}

            @app.post("/detokenize")
            async def detokenize(request: Request):
                return {"prompt": self.decode((await request.json())["tokens"])}

        async def complete(request: Request, chat: bool):
            body = await request.json()
            k = len(self.seen)
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            s = self.script
            seen = Seen(k, len(prompt.split()), body["max_tokens"], s.ttft_s[k % len(s.ttft_s)],
                        s.tpot_s[k % len(s.tpot_s)], s.failures.get(k), body,
                        request.headers.get("authorization"))
            self.seen.append(seen)
            if seen.failure in ("400", "500"):
                error = {"message": f"scripted failure of request {k}", "type": "scripted",
                         "code": int(seen.failure)}
                return JSONResponse({"error": error}, status_code=int(seen.failure))
            return StreamingResponse(self._stream(seen, chat), media_type="text/event-stream")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await complete(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await complete(request, chat=True)

        return app

    async def _stream(self, seen: Seen, chat: bool):
        loop = asyncio.get_running_loop()
        t_arrival = loop.time()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.live_streams += 1
        try:
            if chat:  # a role-only first chunk, sent at once: it carries no token
                yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant",
                                                               "content": ""}}]})
            for i in range(seen.max_tokens):
                due = t_arrival + seen.ttft_s + i * seen.tpot_s
                await asyncio.sleep(max(0.0, due - loop.time()))
                if i == 2 and seen.failure == "stream":
                    yield _sse({"error": {"message": "scripted engine failure", "code": 500}})
                    return
                if i == 2 and seen.failure == "drop":
                    raise RuntimeError("scripted dropped connection")
                text = f" w{i}"
                last = "length" if i == seen.max_tokens - 1 else None
                choice = ({"index": 0, "delta": {"content": text}, "finish_reason": last} if chat
                          else {"index": 0, "text": text, "finish_reason": last})
                yield _sse({"choices": [choice]})
            if self.script.usage:
                yield _sse({"choices": [], "usage": {
                    "prompt_tokens": seen.prompt_tokens, "completion_tokens": seen.max_tokens,
                    "total_tokens": seen.prompt_tokens + seen.max_tokens}})
            self.finished.add(seen.arrival)
            self.in_flight -= 1
            yield "data: [DONE]\n\n"
        finally:
            self.live_streams -= 1
            if seen.arrival not in self.finished:
                self.in_flight -= 1

    def wait_until_streams_closed(self, timeout_s: float = 5.0) -> None:
        """Poll (the server runs in another thread) until every stream generator closed."""
        deadline = time.monotonic() + timeout_s
        while self.live_streams and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert self.live_streams == 0, f"{self.live_streams} streams still open"


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"
