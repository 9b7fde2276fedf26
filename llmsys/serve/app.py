"""The FastAPI app: routes, API keys, body-size limit, readiness, and OpenAI-style errors.

    app = create_app(ServerConfig(model="path/to/checkpoint"))   # loads in the background
    uvicorn.run(app)                      # or: llmsys serve --model DIR (see server.py)

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, POST /tokenize,
POST /detokenize (vLLM's shapes), GET /health, GET /metrics (Prometheus text), GET / (the
playground page `web/index.html`, when present; other files of `web/` under /web/).

The model loads in a worker thread after the server starts: until it is ready every API
route and /health answer 503 (so does everything during shutdown). With API keys set,
/v1/*, /tokenize and /detokenize need `Authorization: Bearer <key>` (401 otherwise);
/health, /metrics and the page stay open, for load balancers and scrapers. Bodies over
`max_body_bytes` get 413 before they are parsed; invalid fields 400 (FastAPI's 422 is
reshaped); unknown routes 404; a bug 500 with the error logged, never a client's mistake.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmsys.llm import LLM
from llmsys.serve import chat, completions
from llmsys.serve.async_engine import AsyncEngine
from llmsys.serve.config import ServerConfig
from llmsys.serve.errors import APIError, bad_request, from_validation_errors
from llmsys.serve.metrics import EngineStats, Metrics
from llmsys.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from llmsys.serve.serving import Serving

log = logging.getLogger("llmsys.serve")
WEB_DIR = Path(__file__).parent / "web"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
DRAIN_FACTOR = 16  # an oversized body is read (and dropped) up to this many times the limit


class ServerState:
    """The app's life: loading -> ready (or failed) -> stopping."""

    def __init__(self, config: ServerConfig, load: Callable[[], LLM]):
        self.config, self.load = config, load
        self.metrics = Metrics(config.model_name)
        self.serving: Serving | None = None
        self.load_error: BaseException | None = None
        self.stopping = False
        self.created = 0
        self.on_ready: Callable[[], None] = lambda: None
        self.on_load_error: Callable[[BaseException], None] = lambda e: None

    async def start(self) -> None:
        try:
            llm = await _in_own_thread(self.load)
        except Exception as e:  # /health says so; run_server and BackgroundServer raise it
            self.load_error = e
            self.on_load_error(e)
            return
        engine = AsyncEngine(llm, self.metrics, self.config.max_concurrent_requests)
        engine.start()
        self.serving = Serving(llm, engine, self.config)
        self.created = int(time.time())
        self.on_ready()

    def stop(self) -> None:
        self.stopping = True
        if self.serving is not None:
            self.serving.engine.shutdown()

    def require(self) -> Serving:
        if self.stopping:
            raise APIError(503, "the server is shutting down")
        if self.load_error is not None:
            raise APIError(503, f"the model failed to load: {self.load_error}")
        if self.serving is None:
            raise APIError(503, "the model is still loading; retry shortly")
        return self.serving


async def _in_own_thread(fn: Callable[[], LLM]) -> LLM:
    """Run `fn` in a thread of its own that ends when it returns. Every thread that runs
    torch operations keeps an OpenMP thread team; one left alive in the default executor
    (`asyncio.to_thread`) means more OpenMP threads than cores, and then the engine thread's
    workers sleep between parallel sections instead of spinning (measured: ~20% of served
    throughput, `benchmarks/serve_soak.py`)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(result: LLM | None, error: BaseException | None) -> None:
        if not done.done():  # the server may have stopped while loading
            done.set_exception(error) if error is not None else done.set_result(result)

    def run() -> None:
        try:
            outcome = (fn(), None)
        except BaseException as e:  # handed to the awaiting coroutine
            outcome = (None, e)
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="llmsys-load", daemon=True).start()
    return await done


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        too_large = declared.isdigit() and int(declared) > self.limit
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            too_large = too_large or size > self.limit
            if too_large:  # read on (up to a bound) so that the client gets to see the 413
                if size > DRAIN_FACTOR * self.limit:
                    break
                continue
            chunks.append(message.get("body", b""))
        if too_large:
            error = APIError(413, f"the request body is larger than the limit of {self.limit} "
                                  f"bytes (max_body_bytes)", code="request_too_large")
            await error.response()(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _authorized(request: Request) -> None:
    keys = request.app.state.server.config.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(given, key.encode()) for key in keys):
        raise APIError(401, "missing or invalid API key: send the header "
                            "'Authorization: Bearer <key>'", code="invalid_api_key")


def _serving(request: Request, _: Annotated[None, Depends(_authorized)]) -> Serving:
    return request.app.state.server.require()


Ctx = Annotated[Serving, Depends(_serving)]


def load_model(config: ServerConfig) -> LLM:
    return LLM(config.model, dtype=config.dtype, device=config.device,
               max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
               num_kv_blocks=config.num_kv_blocks)


def create_app(config: ServerConfig, load: Callable[[], LLM] | None = None) -> FastAPI:
    """The app for `config`. `load` makes the LLM (in a worker thread, after the server has
    started); by default it loads `config.model` with the config's engine settings."""
    state = ServerState(config, load or (lambda: load_model(config)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(state.start())
        yield
        loading.cancel()
        state.stop()

    app = FastAPI(title="llmsys", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = state
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    _add_error_handlers(app)

    @app.get("/v1/models")
    async def list_models(ctx: Ctx) -> JSONResponse:
        return JSONResponse(ModelList(data=[_card(ctx, state)]).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, ctx: Ctx) -> JSONResponse:
        ctx.check_model(model_id)
        return JSONResponse(_card(ctx, state).model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request,
                               ctx: Ctx) -> Response:
        return await chat.create_chat_completion(ctx, req, raw)

    @app.post("/v1/completions")
    async def text_completions(req: CompletionRequest, raw: Request,
                               ctx: Ctx) -> Response:
        return await completions.create_completion(ctx, req, raw)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest, ctx: Ctx) -> JSONResponse:
        ctx.check_model(req.model)
        ids = await ctx.off_loop(_tokenize, ctx, req)
        strs = [ctx.llm.tokenizer.id_to_token(i) for i in ids] if req.return_token_strs else None
        return JSONResponse({"count": len(ids), "max_model_len": ctx.max_model_len,
                             "tokens": ids, "token_strs": strs})

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest,
                         ctx: Ctx) -> JSONResponse:
        ctx.check_model(req.model)
        vocab = ctx.llm.config.vocab_size
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"token id(s) {bad[:5]} out of range: must be integers in "
                              f"[0, {vocab})", "tokens")
        text = ctx.llm.tokenizer.decode(req.tokens, skip_special_tokens=False)
        return JSONResponse({"prompt": text})

    @app.get("/health")
    async def health() -> JSONResponse:
        state.require()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        stats = state.serving.engine.stats if state.serving else EngineStats()
        return Response(state.metrics.render(stats), media_type=PROMETHEUS_TEXT)

    @app.get("/")
    async def playground() -> FileResponse:
        page = WEB_DIR / "index.html"
        if not page.is_file():
            raise APIError(404, "the playground page is not installed "
                                "(llmsys/serve/web/index.html)")
        return FileResponse(page)

    if WEB_DIR.is_dir():
        app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app


def _card(ctx: Serving, state: ServerState) -> ModelCard:
    return ModelCard(id=ctx.model_name, created=state.created, root=str(ctx.config.model),
                     max_model_len=ctx.max_model_len)


def _tokenize(ctx: Serving, req: TokenizeRequest) -> list[int]:
    if (req.prompt is None) == (req.messages is None):
        raise bad_request("give exactly one of 'prompt' and 'messages'", "prompt")
    if req.prompt is not None:
        return ctx.llm.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    rendered = ctx.llm.render_chat(chat.chat_messages(req.messages), tools=tools,
                                   add_generation_prompt=req.add_generation_prompt)
    return rendered["prompt_token_ids"]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_errors(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return APIError(exc.status_code, message).response(dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error: {type(exc).__name__}").response()

