"""Tests of llmsys.rag.integrations: the LangChain and LlamaIndex retriever adapters.

The reference is our own `Retriever.search` on a small store (a "topic" embedder maps a few
words to fixed axes, so dense and BM25 search find different chunks and hybrid fuses them):
every adapter must return the same chunks, in the same order, with the same scores. The
network is blocked for the whole module, so anything reaching for it fails the test.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmsys.rag import integrations
from llmsys.rag.chunking import Chunk
from llmsys.rag.integrations import as_langchain_retriever, as_llamaindex_retriever
from llmsys.rag.readers import SourceDocument
from llmsys.rag.retrieval import Retriever
from llmsys.rag.store import Hit, Store

TOPICS = {"boat": 0, "ship": 0, "sail": 0, "sailors": 0, "bread": 1, "oven": 1, "bake": 1,
          "violin": 2, "music": 2, "concert": 2}

DOCS = {"harbour": ["The ship left port at dawn.", "Sailors mended the torn sail.",
                    "Cargo manifest Q7 attached."],
        "bakery": ["Fresh bread from a wood oven.", "Bake it at high heat.",
                   "Flour delivery Q7 is late."],
        "hall": ["A violin concert tonight.", "The music hall seats nine hundred."]}

QUERIES = ["boat", "q7", "bake bread music", "sailors and the oven", "nothing matches"]


class TopicEmbedder:
    """Counts of topic words on fixed axes plus a small constant axis (never zero)."""

    name = "topics-test"
    dim = 4

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                if word in TOPICS:
                    rows[i, TOPICS[word]] += 1.0
            rows[i, -1] = 0.1
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def retriever(tmp_path: Path) -> Retriever:
    store = Store(tmp_path / "rag.db", TopicEmbedder())
    for doc_id, parts in DOCS.items():
        text, chunks = " ".join(parts), []
        for i, part in enumerate(parts):
            start = text.index(part)
            meta = {"part": i, "lang": "en" if i else "fr"}
            if doc_id == "hall":
                meta["score"] = "five stars"      # clashes with a hit field, which wins
            chunks.append(Chunk(part, start, start + len(part), meta))
        store.upsert(SourceDocument(doc_id, text, None, f"{doc_id}.txt", {}), chunks)
    yield Retriever(store, "hybrid", candidates=5, rrf_k=10)
    store.close()


def expected_metadata(hit: Hit) -> dict[str, object]:
    return {**hit.metadata, "chunk_id": hit.chunk_id, "doc_id": hit.doc_id,
            "score": hit.score, "start": hit.start, "end": hit.end}


def check_documents(docs: list, hits: list[Hit]) -> None:
    from langchain_core.documents import Document
    assert all(isinstance(d, Document) for d in docs)
    assert [d.id for d in docs] == [h.chunk_id for h in hits]
    assert [d.page_content for d in docs] == [h.text for h in hits]
    assert [d.metadata for d in docs] == [expected_metadata(h) for h in hits]


def check_nodes(nodes: list, hits: list[Hit]) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    assert [n.node.node_id for n in nodes] == [h.chunk_id for h in hits]
    assert [n.score for n in nodes] == [h.score for h in hits]
    assert [n.node.get_content() for n in nodes] == [h.text for h in hits]
    assert [n.node.metadata for n in nodes] == [expected_metadata(h) for h in hits]
    assert [n.node.ref_doc_id for n in nodes] == [h.doc_id for h in hits]
    assert [(n.node.start_char_idx, n.node.end_char_idx) for n in nodes] == [
        (h.start, h.end) for h in hits]


def test_the_corpus_exercises_hybrid_search(retriever: Retriever) -> None:
    store = retriever.store
    assert store.search_bm25("boat", 3) == []                   # only the embedder knows boat
    assert store.search_dense("boat", 1)[0].doc_id == "harbour"
    assert {h.doc_id for h in store.search_bm25("q7", 5)} == {"harbour", "bakery"}
    assert len(retriever.search("bake bread music", 4)) == 4


# ----------------------------------------------------------------------------- LangChain

@pytest.mark.parametrize("k", [1, 3, 8])
def test_langchain_matches_retriever(retriever: Retriever, k: int) -> None:
    lc = as_langchain_retriever(retriever, k=k)
    assert isinstance(lc, integrations.LangChainRetriever)
    for query in QUERIES:
        hits = retriever.search(query, k)
        check_documents(lc.invoke(query), hits)
        check_documents(asyncio.run(lc.ainvoke(query)), hits)


def test_langchain_filters_pass_through(retriever: Retriever) -> None:
    for flt in ({"doc_id": "bakery"}, {"lang": "en"}, {"doc_id": ["hall", "harbour"]}):
        lc = as_langchain_retriever(retriever, k=4, filter=flt)
        for query in QUERIES:
            hits = retriever.search(query, 4, flt)
            check_documents(lc.invoke(query), hits)
    docs = as_langchain_retriever(retriever, k=8, filter={"lang": "fr"}).invoke("bake")
    assert {d.metadata["part"] for d in docs} == {0}
    hall = as_langchain_retriever(retriever, k=1, filter={"doc_id": "hall"}).invoke("music")
    assert isinstance(hall[0].metadata["score"], float)


def test_langchain_in_a_chain_and_in_batch(retriever: Retriever) -> None:
    from langchain_core.runnables import RunnableLambda

    def format_docs(docs: list) -> str:
        return "\n\n".join(f"[{d.metadata['doc_id']}] {d.page_content}" for d in docs)

    chain = as_langchain_retriever(retriever, k=3) | RunnableLambda(format_docs)
    for query in QUERIES[:3]:
        expected = "\n\n".join(f"[{h.doc_id}] {h.text}" for h in retriever.search(query, 3))
        assert chain.invoke(query) == expected
    # batch runs the retriever in a thread pool: the shared lock keeps the store safe
    queries = QUERIES * 4
    got = chain.batch(queries, config={"max_concurrency": 4})
    assert got == [chain.invoke(q) for q in queries]


# ----------------------------------------------------------------------------- LlamaIndex

@pytest.mark.parametrize("k", [1, 3, 8])
def test_llamaindex_matches_retriever(retriever: Retriever, k: int) -> None:
    li = as_llamaindex_retriever(retriever, k=k)
    assert isinstance(li, integrations.LlamaIndexRetriever)
    for query in QUERIES:
        hits = retriever.search(query, k)
        check_nodes(li.retrieve(query), hits)
        check_nodes(asyncio.run(li.aretrieve(query)), hits)


def test_llamaindex_filters_and_llm_view(retriever: Retriever) -> None:
    from llama_index.core.schema import MetadataMode
    flt = {"doc_id": ["bakery", "hall"], "lang": "en"}
    li = as_llamaindex_retriever(retriever, k=5, filter=flt)
    for query in QUERIES:
        check_nodes(li.retrieve(query), retriever.search(query, 5, flt))
    shown = li.retrieve("bake")[0].node.get_content(MetadataMode.LLM)
    assert "doc_id: bakery" in shown and "Bake it at high heat." in shown
    assert "score" not in shown and "chunk_id" not in shown


def test_llamaindex_query_engine_offline(retriever: Retriever) -> None:
    """A RetrieverQueryEngine with LlamaIndex's MockLLM (which echoes its prompt): our chunks
    reach the prompt and the sources, and no global setting (default LLM) is created."""
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    li = as_llamaindex_retriever(retriever, k=3)
    engine = RetrieverQueryEngine.from_args(li, llm=MockLLM())
    response = engine.query("bake bread music")
    hits = retriever.search("bake bread music", 3)
    assert [n.node.node_id for n in response.source_nodes] == [h.chunk_id for h in hits]
    assert all(h.text in str(response) for h in hits)
    assert Settings._llm is None and Settings._embed_model is None


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("factory", [as_langchain_retriever, as_llamaindex_retriever])
def test_bad_arguments_are_rejected(retriever: Retriever, factory) -> None:
    for k in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match=re.escape(f"k must be an int >= 1, got {k!r}")):
            factory(retriever, k=k)
    with pytest.raises(ValueError, match="filter must be a dict or None, got list"):
        factory(retriever, filter=[("doc_id", "hall")])
    with pytest.raises(ValueError, match="filter key must be a str"):
        factory(retriever, filter={"bad key!": 1})
    with pytest.raises(TypeError, match="retriever must have a search.*got Store"):
        factory(retriever.store)


def test_non_string_queries_are_rejected(retriever: Retriever) -> None:
    with pytest.raises(TypeError, match="query must be a str, got int"):
        as_langchain_retriever(retriever).invoke(5)
    with pytest.raises(TypeError, match="search must be a HitSearch, got Retriever"):
        integrations.LlamaIndexRetriever(retriever)


class LockCheckingRetriever:
    """Answers like `retriever`, recording whether the adapters' shared lock was held."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever, self.locked = retriever, []

    def search(self, query: str, k: int, filter: dict | None = None) -> list[Hit]:
        self.locked.append(integrations._SEARCH_LOCK.locked())
        return self.retriever.search(query, k, filter)


def test_every_adapter_search_holds_the_shared_lock(retriever: Retriever) -> None:
    checking = LockCheckingRetriever(retriever)
    lc = as_langchain_retriever(checking, k=2)
    li = as_llamaindex_retriever(checking, k=2)
    lc.invoke("boat")
    lc.batch(QUERIES, config={"max_concurrency": 3})
    asyncio.run(lc.ainvoke("boat"))
    li.retrieve("boat")
    asyncio.run(li.aretrieve("boat"))
    assert checking.locked == [True] * (4 + len(QUERIES))
    assert not integrations._SEARCH_LOCK.locked()


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_module_imports_no_framework() -> None:
    out = run_python("import sys, llmsys.rag.integrations\n"
                     "print(sorted(m for m in sys.modules\n"
                     "             if m.split('.')[0] in ('langchain_core', 'llama_index')))")
    assert out.strip() == "[]"


def test_missing_framework_names_the_extra() -> None:
    code = """
import sys
sys.modules["langchain_core"] = None
sys.modules["llama_index"] = None
from llmsys.rag import integrations

class Stub:
    def search(self, query, k, filter=None):
        return []

for make in (integrations.as_langchain_retriever, integrations.as_llamaindex_retriever):
    try:
        make(Stub())
    except ImportError as e:
        print(e)
try:
    integrations.LangChainRetriever
except ImportError as e:
    print(e)
"""
    lines = run_python(code).splitlines()
    assert lines == [
        "the LangChain adapter needs langchain-core: pip install 'llmsys[langchain]'",
        "the LlamaIndex adapter needs llama-index-core: pip install 'llmsys[llamaindex]'",
        "the LangChain adapter needs langchain-core: pip install 'llmsys[langchain]'"]
