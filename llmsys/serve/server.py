"""Running the app: `run_server` for `llmsys serve`, `BackgroundServer` for tests and tools.

    llmsys serve --model DIR --port 8000          # prints the URL once the model is ready

    with BackgroundServer(ServerConfig(model=DIR, port=0)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")

The socket is bound before uvicorn starts, so port 0 picks a free port and the URL is known
at once. SIGINT / SIGTERM shut down gracefully: the listening socket closes, requests in
flight get `graceful_shutdown_s` to finish (then they are cancelled and aborted), the
engine loop stops, and `run_server` returns normally.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from llmsys.llm import LLM
from llmsys.serve.app import ServerState, create_app
from llmsys.serve.config import ServerConfig


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0) so that asyncio sets TCP_NODELAY on accepted connections; without
    # it small responses wait ~40 ms for delayed ACKs
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)  # connections queue from now on, even before uvicorn accepts them
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn(app: FastAPI, config: ServerConfig) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=config.graceful_shutdown_s))


class _Signalled(Exception):
    pass


def _raise_signalled(signum: int, frame: object) -> None:
    raise _Signalled(signum)


def run_server(config: ServerConfig, say: Callable[[str], None] = print) -> None:
    """Serve until SIGINT / SIGTERM. Raises the load error if the model fails to load."""
    sock = bind_socket(config.host, config.port)
    url = url_of(sock)
    app = create_app(config)
    state: ServerState = app.state.server
    server = _uvicorn(app, config)
    state.on_ready = lambda: say(f"llmsys serve: ready: '{config.model_name}' at {url}/v1 "
                                 f"(OpenAI API), playground at {url}/")
    state.on_load_error = lambda e: setattr(server, "should_exit", True)
    say(f"llmsys serve: loading {config.model}; listening on {url} (answers 503 while loading)")
    # uvicorn catches the signals while it serves and re-raises them once it has shut down
    # gracefully; these handlers turn that into a normal return.
    previous = {s: signal.signal(s, _raise_signalled) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except _Signalled:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    if state.load_error is not None:
        raise state.load_error
    say("llmsys serve: shut down")


class BackgroundServer:
    """The server in a thread on `config.host` (port 0: a free one), until the block ends."""

    def __init__(self, config: ServerConfig, load: Callable[[], LLM] | None = None,
                 wait_ready: bool = True, ready_timeout: float = 120.0):
        """`load`: see `create_app`. With `wait_ready=False` the block starts as soon as the
        server listens (it answers 503 until the model is loaded)."""
        self.config, self.load = config, load
        self.wait_ready, self.ready_timeout = wait_ready, ready_timeout
        self.ready = threading.Event()

    def __enter__(self) -> BackgroundServer:
        self.sock = bind_socket(self.config.host, self.config.port)
        self.url = url_of(self.sock)
        self.app = create_app(self.config, self.load)
        self.state: ServerState = self.app.state.server
        self.state.on_ready = self.ready.set
        self.state.on_load_error = lambda e: self.ready.set()
        self.server = _uvicorn(self.app, self.config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="llmsys-server", daemon=True)
        self.thread.start()
        if not self.wait_ready:
            return self
        if not self.ready.wait(self.ready_timeout):
            self.__exit__(None, None, None)
            raise TimeoutError(f"the server did not get ready in {self.ready_timeout} s")
        if self.state.load_error is not None:
            self.__exit__(None, None, None)
            raise self.state.load_error
        return self

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(self.config.graceful_shutdown_s + 10)
        self.sock.close()
