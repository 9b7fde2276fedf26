"""The agent's `search` tool over a RAG retriever: numbered passages with source and offsets.

    from llmsys.agent import Agent, ChatModel
    from llmsys.rag.retrieval import Retriever
    from llmsys.rag.search_tool import rag_search_tool

    search = rag_search_tool(Retriever(store), k=5)        # a Tool named "search"
    agent = Agent(ChatModel(base_url, "my-model"), tools=[search])
    agent.run("What does the guide say about installing from source?")
    search.run({"query": "install from source"})           # the text the model reads

The model calls `search(query)`; the observation is one block per hit, best first:

    [1] Guide (source: /docs/guide.md; section: Install > From source; characters 120-480)
    <the passage text>

followed by a blank line and the next block, or "No results found." when the retriever finds
nothing. A passage longer than `max_passage_chars` is cut, with a note giving how many
characters were left out (the offsets still give the whole passage). Titles and sources are
looked up as in `llmsys.rag.answer` (chunk metadata, else the store's document rows, else the
doc id); the page is shown when the chunk metadata has one. A blank query is an error the
agent reports back to the model. `filter` (as in `Store`) restricts every search.
"""

from __future__ import annotations

from typing import Any

from llmsys.agent.tools import Tool, tool
from llmsys.rag.answer import (
    DocumentCatalog,
    Searcher,
    hit_headings,
    hit_page,
    shown_span,
    store_of,
)
from llmsys.rag.checks import check_int
from llmsys.rag.store import Hit, Store

__all__ = ["NO_RESULTS", "format_passages", "rag_search_tool"]

NO_RESULTS = "No results found."




def _passage(number: int, hit: Hit, catalog: DocumentCatalog, max_chars: int) -> str:
    title, source = catalog.describe(hit)
    where = [f"source: {source}"]
    headings, page = hit_headings(hit.metadata), hit_page(hit.metadata)
    if headings:
        where.append(f"section: {' > '.join(headings)}")
    if page is not None:
        where.append(f"page {page}")
    text, start, end = shown_span(hit, use_windows=True)  # a sentence window, as `answer`
    where.append(f"characters {start}-{end}")
    if len(text) > max_chars:
        text = f"{text[:max_chars]}\n[... {len(text) - max_chars} more characters]"
    return f"[{number}] {title or hit.doc_id} ({'; '.join(where)})\n{text}"


def format_passages(hits: list[Hit], catalog: DocumentCatalog, max_chars: int = 2000) -> str:
    """The tool's observation for `hits` (see the module docstring)."""
    check_int("max_chars", max_chars, 1)
    if not hits:
        return NO_RESULTS
    return "\n\n".join(_passage(i, hit, catalog, max_chars) for i, hit in enumerate(hits, 1))


def rag_search_tool(retriever: Searcher, k: int = 5, *, name: str = "search",
                    max_passage_chars: int = 2000, filter: dict[str, Any] | None = None,
                    store: Store | None = None) -> Tool:
    """An agent tool `name(query)` returning the top `k` passages of `retriever`."""
    if not callable(getattr(retriever, "search", None)):
        raise TypeError(f"retriever must have search(query, k, filter), got "
                        f"{type(retriever).__name__}")
    check_int("k", k, 1)
    check_int("max_passage_chars", max_passage_chars, 1)
    if filter is not None and not isinstance(filter, dict):
        raise TypeError(f"filter must be a dict or None, got {type(filter).__name__}")
    catalog = DocumentCatalog(store_of(retriever, store))

    def search(query: str) -> str:
        """Search the document collection for passages relevant to a query. Returns numbered
        passages with their title, source and character offsets, best first.

        Args:
            query: What to look for: keywords or a question.
        """
        if not query.strip():
            raise ValueError("query must not be blank")
        hits = retriever.search(query, k, filter)
        return format_passages(list(hits), catalog, max_passage_chars)

    return tool(search, name=name)
