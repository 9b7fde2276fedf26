"""Fixtures for the server tests: a tiny checkpoint, a real server on a free loopback port
(shared by the session), the official `openai` client and `httpx` pointed at it, and the
checkpoint's tokenizer loaded by transformers (the reference for token counts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import CONTEXT, MODEL  # noqa: E402

from llmsys.serve import BackgroundServer, ServerConfig  # noqa: E402
from llmsys.testing import make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("serve_llama"),
                                max_position_embeddings=CONTEXT)


@pytest.fixture(scope="session")
def server(checkpoint: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(model=str(checkpoint), port=0, served_model_name=MODEL, max_n=8,
                          graceful_shutdown_s=5)
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="session")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def hf_tokenizer(checkpoint: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(checkpoint)
