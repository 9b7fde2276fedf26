"""The `scripted_server` fixture: scripted OpenAI-compatible servers on free loopback ports."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from bench_scripted_server import Script, ScriptedServer  # noqa: E402


@pytest.fixture
def scripted_server() -> Iterator:
    """A factory: `scripted_server(Script(...))` starts a server; all stop at test end."""
    running: list[tuple[object, threading.Thread]] = []

    def start(script: Script) -> ScriptedServer:
        srv = ScriptedServer(script)
        config = uvicorn.Config(srv.app, host="127.0.0.1", port=0, log_level="critical",
                                lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert server.started, "the scripted server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        srv.url = f"http://127.0.0.1:{port}"
        return srv

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the scripted server did not stop"
