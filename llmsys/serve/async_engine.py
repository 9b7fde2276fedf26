"""`AsyncEngine`: one background thread steps the synchronous `LLMEngine` for all requests.

    engine = AsyncEngine(llm, metrics, max_concurrent_requests=256)
    engine.start()                                  # inside the server's event loop
    stream = await engine.add("r1", {"prompt": text, "prompt_token_ids": ids}, params)
    async for out in stream:                        # RequestOutput: cumulative text/tokens
        ...                                         # the last one has out.finished
    await stream.aclose()                           # early: aborts the request
    engine.shutdown()

Only the loop thread touches the engine. HTTP handlers send it commands (add, abort, stop)
through a queue and get outputs back through per-request asyncio queues
(`loop.call_soon_threadsafe`), so the event loop never waits for a forward pass, and every
request in flight shares the one engine: continuous batching across HTTP requests. The loop
also times requests for the metrics and snapshots the engine's gauges after each step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from llmsys.engine.sequence import Status
from llmsys.llm import LLM
from llmsys.outputs import RequestOutput
from llmsys.sampling_params import SamplingParams
from llmsys.serve.metrics import EngineStats, Metrics

log = logging.getLogger("llmsys.serve")


class EngineStoppedError(RuntimeError):
    """The server is shutting down; no new requests are taken."""


class EngineError(RuntimeError):
    """An engine step failed (a bug or a device fault); the requests in flight end with it."""


class TooManyRequestsError(RuntimeError):
    """More requests in flight than the server admits."""


@dataclass
class _Add:
    request_id: str
    prompt: dict
    params: SamplingParams
    done: concurrent.futures.Future


@dataclass
class _Abort:
    request_id: str


_STOP = object()


@dataclass
class _Timing:
    """What the loop knows about one request's progress (loop thread only)."""

    arrival: float
    tokens_seen: list[int]  # per sequence
    scheduled: bool = False
    last_token: float | None = None  # None until the first token


@dataclass
class RequestStream:
    """The outputs of one request, as an async iterator; closing it early aborts it."""

    engine: AsyncEngine
    request_id: str
    outputs: asyncio.Queue
    finished: bool = field(default=False, init=False)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self.outputs.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)


class AsyncEngine:
    def __init__(self, llm: LLM, metrics: Metrics, max_concurrent_requests: int):
        self.llm, self.engine, self.metrics = llm, llm.engine, metrics
        self.max_concurrent_requests = max_concurrent_requests
        self.stats = EngineStats()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue] = {}  # event loop side: requests in flight
        self._timings: dict[str, _Timing] = {}  # loop thread side
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- the event loop's side -----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="llmsys-engine", daemon=True)
        self._thread.start()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    async def add(self, request_id: str, prompt: dict, params: SamplingParams) -> RequestStream:
        """Admit a request; ValueError (bad request) comes from the engine's checks."""
        if self._stopping:
            raise EngineStoppedError("the server is shutting down")
        if len(self._streams) >= self.max_concurrent_requests:
            raise TooManyRequestsError(
                f"the server already has {len(self._streams)} requests in flight (the limit, "
                f"max_concurrent_requests); retry later")
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = outputs
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(_Add(request_id, prompt, params, done))
        try:
            await asyncio.wrap_future(done)
        except BaseException:  # refused, or the client left while waiting
            self.abort(request_id)
            raise
        return RequestStream(self, request_id, outputs)

    def abort(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            self._commands.put(_Abort(request_id))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop: requests still in flight end with EngineStoppedError."""
        self._stopping = True
        if self._thread is not None and self._thread.is_alive():
            self._commands.put(_STOP)
            self._thread.join(timeout)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)
                if out.finished:
                    del self._streams[out.request_id]

    def _fail(self, request_ids: list[str], error: BaseException) -> None:
        for rid in request_ids:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                stream.put_nowait(error)

    # ---- the loop thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            for command in self._next_commands(block=not self.engine.has_unfinished()):
                if command is _STOP:
                    self._fail_all(EngineStoppedError("the server is shutting down"))
                    return
                self._apply(command)
            if self.engine.has_unfinished():
                self._step()
            self.stats = self._snapshot()

    def _next_commands(self, block: bool) -> list:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: _Add | _Abort) -> None:
        if isinstance(command, _Abort):
            self._abort(command.request_id)
            return
        if not command.done.set_running_or_notify_cancel():
            return  # the client left before the request was admitted
        try:
            self.engine.add_request(command.request_id, command.prompt, command.params)
        except Exception as e:  # ValueError: the request is invalid
            command.done.set_exception(e)
            return
        n = command.params.n
        self._timings[command.request_id] = _Timing(time.monotonic(), [0] * n)
        self.metrics.request_added(len(command.prompt["prompt_token_ids"]))
        command.done.set_result(None)

    def _abort(self, request_id: str) -> None:
        request = self.engine.requests.get(request_id)
        timing = self._timings.pop(request_id, None)
        if self.engine.abort(request_id) and timing is not None:
            # per completion: those of a request with n > 1 may have finished already
            self.metrics.request_finished([s.finish_reason or "abort" for s in request.seqs],
                                          None)

    def _step(self) -> None:
        start = time.monotonic()
        try:
            outputs = self.engine.step()
        except Exception as e:
            log.exception("engine step failed; failing the requests in flight")
            self._fail_all(EngineError(f"the engine failed: {type(e).__name__}: {e}"))
            return
        self._observe(outputs, start)
        if outputs:
            self._loop.call_soon_threadsafe(self._deliver, outputs)

    def _fail_all(self, error: BaseException) -> None:
        rids = list(self._timings)
        for rid in rids:
            self._abort(rid)
        self._loop.call_soon_threadsafe(self._fail, rids, error)

    def _observe(self, outputs: list[RequestOutput], step_start: float) -> None:
        """Queue time, TTFT, inter-token latency, end-to-end latency, token counts."""
        now = time.monotonic()
        for rid, timing in self._timings.items():
            if not timing.scheduled and self._was_scheduled(rid):
                timing.scheduled = True
                self.metrics.request_scheduled(step_start - timing.arrival)
        for out in outputs:
            timing = self._timings.get(out.request_id)
            if timing is None:
                continue
            new = 0
            for c in out.outputs:
                new += len(c.token_ids) - timing.tokens_seen[c.index]
                timing.tokens_seen[c.index] = len(c.token_ids)
            if new:
                first = timing.last_token is None
                since = timing.arrival if first else timing.last_token
                self.metrics.tokens_generated(new, first, now - since)
                timing.last_token = now
            if out.finished:
                del self._timings[out.request_id]
                self.metrics.request_finished([c.finish_reason or "stop" for c in out.outputs],
                                              now - timing.arrival)

    def _was_scheduled(self, request_id: str) -> bool:
        request = self.engine.requests.get(request_id)
        if request is None:  # it finished within this very step
            return True
        return any(s.status is not Status.WAITING or s.num_computed_tokens for s in request.seqs)

    def _snapshot(self) -> EngineStats:
        blocks, scheduler = self.engine.blocks, self.engine.scheduler
        used = blocks.num_blocks - blocks.num_free_blocks
        return EngineStats(len(scheduler.running), len(scheduler.waiting),
                           used / blocks.num_blocks, blocks.prefix_queries, blocks.prefix_hits,
                           scheduler.num_preemptions)
