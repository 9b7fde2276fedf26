"""Query transformations that ask a chat model before searching: multi-query and HyDE.

    from llmsys.agent.chat_model import ChatModel
    from llmsys.rag.query_transforms import TransformingRetriever, hyde, multi_query

    model = ChatModel("http://127.0.0.1:8000/v1", "qwen2.5-7b-instruct")
    multi_query(model, "car engine noise", n=3)   # ["car engine noise", "loud motor", ...]
    hyde(model, "why does my car engine knock?")  # "Engine knock happens when ..."
    retriever = TransformingRetriever(Retriever(store, "hybrid"), model, mode="multi-query")
    hits = retriever.search("car engine noise", k=10, filter={"source": "manual.pdf"})
    retriever.usage                               # tokens and calls spent on the model

- `multi_query(model, query, n)`: one request asking for n rephrasings (other words,
  synonyms, related terms), one per line. The reply is read line by line: numbering ("1.",
  "2)", "[3]", "Query 4:") and bullets are stripped, as are surrounding quotes and bold
  markers; empty lines, lines ending with ":" (a preamble such as "Here are three
  queries:"), echoes of the query and repeats are dropped (compared without case, extra
  white space, quotes or final punctuation), and at most n are kept. Returns the original
  query first, then the rewrites; a reply without usable lines gives just [query].
- `hyde(model, query)`: one request for a short passage that would answer the query (a
  "hypothetical document"); returns its text, stripped (a leading "Passage:" label too),
  "" when the model gave none.

Both raise `ModelError` when the endpoint fails, and add the reply's token counts to
`usage` when one is passed.

`TransformingRetriever(retriever, model, mode, n_queries, include_query, on_error)` wraps a
`retrieval.Retriever` and has its `search(query, k, filter)`. Every search asks for
`depth = max(k, retriever.candidates)` hits.

- mode "multi-query": `retriever.search(q, depth, filter)` for each q of
  `multi_query(model, query, n_queries)`, fused by `reciprocal_rank_fusion(lists,
  retriever.rrf_k)`, cut to k.
- mode "hyde": the dense index is searched with the hypothetical passage (joined after the
  query with a blank line when `include_query`, the default; the query alone when the
  passage is empty): `store.search_dense(text, depth, filter)`. With a "hybrid" retriever
  that list is fused with `store.search_bm25(query, depth, filter)` for the original query
  by `retriever.fuse(bm25, dense, k)` (its fusion, weights, rrf_k and candidates); with a
  "dense" retriever it is cut to k. A "bm25" retriever is refused (HyDE needs vectors).

With `on_error="fallback"` a failed model request is logged and the plain
`retriever.search(query, k, filter)` is returned instead of raising `ModelError`.

Limits: one model request per search (nothing is cached: wrap the model or the retriever
to cache); rewrites on one line (e.g. "1. a 2. b") are taken as one rewrite; the retriever
is not thread-safe because of its usage counter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llmsys.agent.chat_model import ModelError, Usage
from llmsys.rag.checks import check_choice, check_int
from llmsys.rag.retrieval import Retriever, reciprocal_rank_fusion
from llmsys.rag.store import Hit

if TYPE_CHECKING:
    from llmsys.agent.chat_model import ChatModel

__all__ = ["TransformingRetriever", "hyde", "multi_query", "parse_rewrites"]

logger = logging.getLogger(__name__)

Mode = Literal["multi-query", "hyde"]
OnError = Literal["raise", "fallback"]
MODES = ("multi-query", "hyde")
ON_ERROR = ("raise", "fallback")

MULTI_QUERY_SYSTEM = (
    "You rewrite search queries. Given a query, write {n} different search queries that ask "
    "for the same information in other words: use synonyms and related terms. Write one "
    "query per line and nothing else.")
HYDE_SYSTEM = (
    "Write a short passage, about {words} words, that answers the question as a passage "
    "from a reference document would. Write only the passage.")

_MARKER = re.compile(r"""^\s*(?:[-*•>]+(?=\s|$)        # a bullet
                           |\(?\d+[.):\]](?=\s|$)        # 1.  2)  (3)  4:
                           |\[\d+\]                       # [5]
                           |(?:query|rewrite|q)\s*\d+\s*[:.)-]|(?:query|rewrite)\s*:
                           )\s*""", re.IGNORECASE | re.VERBOSE)
_QUOTES = "\"'“”‘’`*"


# ----------------------------------------------------------------------------- checks



def _check_query(query: object) -> str:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query must not be empty or only white space")
    return query




def _ask(model: ChatModel, system: str, user: str, max_tokens: int,
         usage: Usage | None) -> str:
    reply = model.complete([{"role": "system", "content": system},
                            {"role": "user", "content": user}], max_tokens=max_tokens)
    if usage is not None:
        usage.add(reply.usage)
    content = reply.message.get("content")
    return content if isinstance(content, str) else ""


# ----------------------------------------------------------------------------- transforms

def _key(text: str) -> str:
    return " ".join(text.casefold().split()).strip(_QUOTES).rstrip(".?!").strip()


def _clean_line(line: str) -> str:
    previous = None
    while previous != line:          # "1. **Query 2:** ..." has several markers
        previous = line
        line = _MARKER.sub("", line).strip().strip(_QUOTES).strip()
    return line


def parse_rewrites(text: str, query: str, n: int) -> list[str]:
    """Up to n distinct rewrites read from a model's reply, echoes of `query` dropped."""
    check_int("n", n, 1)
    seen, rewrites = {_key(query)}, []
    for line in text.splitlines():
        cleaned = _clean_line(line)
        if not cleaned or cleaned.endswith(":") or _key(cleaned) in seen:
            continue
        seen.add(_key(cleaned))
        rewrites.append(cleaned)
        if len(rewrites) == n:
            break
    return rewrites


def multi_query(model: ChatModel, query: str, n: int, *, max_tokens: int = 256,
                usage: Usage | None = None) -> list[str]:
    """The query followed by up to n rewrites generated by `model` (see module docstring)."""
    _check_query(query)
    check_int("n", n, 1)
    check_int("max_tokens", max_tokens, 1)
    reply = _ask(model, MULTI_QUERY_SYSTEM.format(n=n), f"Query: {query.strip()}",
                 max_tokens, usage)
    return [query, *parse_rewrites(reply, query, n)]


def hyde(model: ChatModel, query: str, *, words: int = 100, max_tokens: int = 256,
         usage: Usage | None = None) -> str:
    """A hypothetical passage answering `query`, written by `model` ("" if it gave none)."""
    _check_query(query)
    check_int("words", words, 1)
    check_int("max_tokens", max_tokens, 1)
    reply = _ask(model, HYDE_SYSTEM.format(words=words), query.strip(), max_tokens, usage)
    return re.sub(r"^\s*(?:hypothetical\s+)?passage\s*:\s*", "", reply,
                  flags=re.IGNORECASE).strip()


# ----------------------------------------------------------------------------- retriever

@dataclass
class TransformingRetriever:
    """A `Retriever` whose queries are rewritten (multi-query) or expanded (HyDE) first."""

    retriever: Retriever
    model: ChatModel
    mode: Mode = "multi-query"
    n_queries: int = 3
    include_query: bool = True
    on_error: OnError = "raise"
    usage: Usage = field(default_factory=Usage, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.retriever, Retriever):
            raise TypeError(f"retriever must be a Retriever, got "
                            f"{type(self.retriever).__name__}")
        if not callable(getattr(self.model, "complete", None)):
            raise TypeError(f"model must be a chat model with complete(messages), got "
                            f"{type(self.model).__name__}")
        check_choice("mode", self.mode, MODES)
        check_choice("on_error", self.on_error, ON_ERROR)
        check_int("n_queries", self.n_queries, 1)
        if not isinstance(self.include_query, bool):
            raise TypeError(f"include_query must be a bool, got {self.include_query!r}")
        if self.mode == "hyde" and self.retriever.mode == "bm25":
            raise ValueError("mode 'hyde' needs a 'dense' or 'hybrid' retriever, got a "
                             "'bm25' one")

    @property
    def store(self) -> Any:
        """The wrapped retriever's store (for titles, sources and relevance checks)."""
        return self.retriever.store

    def search(self, query: str, k: int, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The top k chunks for `query` after transforming it (see the module docstring)."""
        _check_query(query)
        check_int("k", k, 1)
        try:
            if self.mode == "multi-query":
                return self._multi_query(query, k, filter)
            return self._hyde(query, k, filter)
        except ModelError as e:
            if self.on_error == "raise":
                raise
            logger.warning("query transform %r failed, searching the plain query: %s",
                           self.mode, e)
            return self.retriever.search(query, k, filter)

    def _depth(self, k: int) -> int:
        return max(k, self.retriever.candidates)

    def _multi_query(self, query: str, k: int, filter: dict[str, Any] | None) -> list[Hit]:
        queries = multi_query(self.model, query, self.n_queries, usage=self.usage)
        lists = [self.retriever.search(q, self._depth(k), filter) for q in queries]
        return reciprocal_rank_fusion(lists, self.retriever.rrf_k)[:k]

    def _hyde(self, query: str, k: int, filter: dict[str, Any] | None) -> list[Hit]:
        passage = hyde(self.model, query, usage=self.usage)
        if not passage:
            logger.warning("HyDE got an empty passage; searching with the query alone")
        if not passage:
            text = query
        elif self.include_query:
            text = f"{query}\n\n{passage}"
        else:
            text = passage
        depth = self._depth(k)  # through the retriever, so its feedback settings apply
        dense = self.retriever.search_dense(text, depth, filter)
        if self.retriever.mode == "dense":
            return dense[:k]
        return self.retriever.fuse(self.retriever.search_bm25(query, depth, filter), dense, k)
