"""Our `Retriever` behind LangChain's and LlamaIndex's retriever interfaces (optional extras).

    from llmsys.rag.integrations import as_langchain_retriever, as_llamaindex_retriever
    from llmsys.rag.retrieval import Retriever

    retriever = Retriever(store, mode="hybrid")
    lc = as_langchain_retriever(retriever, k=4, filter={"source": "paper.pdf"})
    docs = lc.invoke("separated flow")          # [langchain_core Document, ...], best first
    chain = lc | RunnableLambda(format_docs)    # composes like any LangChain runnable
    li = as_llamaindex_retriever(retriever, k=4)
    nodes = li.retrieve("separated flow")       # [NodeWithScore(TextNode, score), ...]

Both adapters return exactly what `retriever.search(query, k, filter)` returns, in the same
order with the same scores, converted:

- LangChain: `Document(page_content=hit.text, id=hit.chunk_id, metadata=...)`, with
  `metadata` = the chunk's own metadata plus `chunk_id`, `doc_id`, `score`, `start` and `end`
  (these five win over chunk metadata keys of the same name). `ainvoke` works too.
- LlamaIndex: `NodeWithScore(TextNode(id_=chunk_id, text=..., metadata=...), score)` with the
  same metadata, `start_char_idx`/`end_char_idx` set to the chunk's offsets and the document
  as the node's source (`node.ref_doc_id == doc_id`). `chunk_id`, `score`, `start` and `end`
  are left out of the metadata LlamaIndex shows to an LLM or an embedder. `aretrieve` works.

`k` and `filter` (a `Store` filter, see `llmsys.rag.store`) are fixed per adapter; make
another adapter for other settings. The adapter classes are built when first needed, so
importing this module imports neither framework; they are also reachable as
`integrations.LangChainRetriever` and `integrations.LlamaIndexRetriever` (for isinstance).
Nothing here reads or sets LlamaIndex's global `Settings` (no default LLM or embedding
model is created), and nothing uses the network beyond what `retriever` itself does.

Threads: a `Store` is not thread-safe, while LangChain's `batch` runs calls in a thread pool
and both `ainvoke` and `aretrieve` search in a worker thread (so the event loop is not
blocked). All searches made through these adapters therefore take one process-wide lock:
they are safe but never run in parallel. Using the same store directly from another thread
at the same time is still unsafe.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

from llmsys.rag.store import Hit, check_filter

LANGCHAIN_EXTRA = "pip install 'llmsys[langchain]'"
LLAMAINDEX_EXTRA = "pip install 'llmsys[llamaindex]'"

# Hit fields copied into the metadata of every document / node.
HIT_FIELDS = ("chunk_id", "doc_id", "score", "start", "end")
# Of those, the ones LlamaIndex should not put into LLM prompts or embedding inputs.
HIDDEN_FROM_LLM = ["chunk_id", "score", "start", "end"]

_SEARCH_LOCK = threading.Lock()


@runtime_checkable
class HitRetriever(Protocol):
    """What the adapters wrap: `Retriever` or anything with the same `search`."""

    def search(self, query: str, k: int, filter: dict[str, Any] | None = None) -> list[Hit]:
        ...


@dataclass(frozen=True)
class HitSearch:
    """One adapter's search: `retriever.search(query, k, filter)` under the shared lock."""

    retriever: HitRetriever
    k: int = 4
    filter: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.retriever, HitRetriever):
            raise TypeError("retriever must have a search(query, k, filter) method (e.g. "
                            f"llmsys.rag.retrieval.Retriever), got {type(self.retriever).__name__}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k must be an int >= 1, got {self.k!r}")
        check_filter(self.filter)        # a bad filter fails here, not at the first query
        if self.filter is not None:      # later changes to the caller's dict do not leak in
            object.__setattr__(self, "filter", dict(self.filter))

    def hits(self, query: str) -> list[Hit]:
        """The top k hits for `query`, best first."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        with _SEARCH_LOCK:
            return self.retriever.search(query, self.k, self.filter)

    async def ahits(self, query: str) -> list[Hit]:
        """`hits` run in a worker thread."""
        return await asyncio.to_thread(self.hits, query)


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """The chunk metadata of `hit` plus its chunk_id, doc_id, score, start and end."""
    return {**hit.metadata, **{name: getattr(hit, name) for name in HIT_FIELDS}}


# ----------------------------------------------------------------------------- LangChain

def as_langchain_retriever(retriever: HitRetriever, k: int = 4,
                           filter: dict[str, Any] | None = None) -> Any:
    """A `langchain_core.retrievers.BaseRetriever` returning `retriever`'s top k chunks."""
    search = HitSearch(retriever, k, filter)
    return _langchain_class()(search=search)


@cache
def _langchain_class() -> type:
    try:
        from langchain_core.documents import Document
        from langchain_core.retrievers import BaseRetriever
        from pydantic import ConfigDict, InstanceOf
    except ImportError as e:
        raise ImportError(f"the LangChain adapter needs langchain-core: {LANGCHAIN_EXTRA}") from e

    def documents(hits: list[Hit]) -> list[Document]:
        return [Document(page_content=h.text, id=h.chunk_id, metadata=hit_metadata(h))
                for h in hits]

    class LangChainRetriever(BaseRetriever):
        """An llmsys `Retriever` as a LangChain retriever (see llmsys.rag.integrations)."""

        model_config = ConfigDict(arbitrary_types_allowed=True)
        search: InstanceOf[HitSearch]

        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            return documents(self.search.hits(query))

        async def _aget_relevant_documents(self, query: str, *, run_manager: Any
                                           ) -> list[Document]:
            return documents(await self.search.ahits(query))

    LangChainRetriever.__qualname__ = "LangChainRetriever"
    return LangChainRetriever


# ----------------------------------------------------------------------------- LlamaIndex

def as_llamaindex_retriever(retriever: HitRetriever, k: int = 4,
                            filter: dict[str, Any] | None = None) -> Any:
    """A `llama_index.core.retrievers.BaseRetriever` returning `retriever`'s top k chunks."""
    search = HitSearch(retriever, k, filter)
    return _llamaindex_class()(search)


@cache
def _llamaindex_class() -> type:
    try:
        from llama_index.core.retrievers import BaseRetriever
        from llama_index.core.schema import (
            NodeRelationship,
            NodeWithScore,
            QueryBundle,
            RelatedNodeInfo,
            TextNode,
        )
    except ImportError as e:
        raise ImportError(f"the LlamaIndex adapter needs llama-index-core: {LLAMAINDEX_EXTRA}"
                          ) from e

    def node(hit: Hit) -> NodeWithScore:
        text_node = TextNode(
            id_=hit.chunk_id, text=hit.text, metadata=hit_metadata(hit),
            start_char_idx=hit.start, end_char_idx=hit.end,
            excluded_llm_metadata_keys=list(HIDDEN_FROM_LLM),
            excluded_embed_metadata_keys=list(HIDDEN_FROM_LLM),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)})
        return NodeWithScore(node=text_node, score=hit.score)

    class LlamaIndexRetriever(BaseRetriever):
        """An llmsys `Retriever` as a LlamaIndex retriever (see llmsys.rag.integrations)."""

        def __init__(self, search: HitSearch) -> None:
            if not isinstance(search, HitSearch):
                raise TypeError(f"search must be a HitSearch, got {type(search).__name__}")
            super().__init__()
            self.search = search

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [node(h) for h in self.search.hits(query_bundle.query_str)]

        async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [node(h) for h in await self.search.ahits(query_bundle.query_str)]

    LlamaIndexRetriever.__qualname__ = "LlamaIndexRetriever"
    return LlamaIndexRetriever


def __getattr__(name: str) -> type:
    """`LangChainRetriever` and `LlamaIndexRetriever`, built (and imported) when asked for."""
    if name == "LangChainRetriever":
        return _langchain_class()
    if name == "LlamaIndexRetriever":
        return _llamaindex_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
