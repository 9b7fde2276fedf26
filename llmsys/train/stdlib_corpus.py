"""English text from the Python standard library, for pretraining without downloads.

`stdlib_documents()` walks the standard library's source directory in sorted order and
parses each `.py` file with `ast` (modules are never imported: some have side effects, such
as `antigravity` opening a browser). Each module becomes one document: its docstring, then
its class and function docstrings in source order, joined by blank lines. The help topics
of `pydoc_data/topics.py` (the language reference as plain text) become one document each.
`write_stdlib_corpus()` writes the documents as JSONL.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = frozenset({
    "site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "ensurepip",
    "turtledemo", "pydoc_data",
})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _parse(path: Path) -> ast.Module | None:
    """The file's syntax tree, or None when it cannot be decoded or parsed."""
    try:
        with warnings.catch_warnings():  # invalid escape sequences in old modules
            warnings.simplefilter("ignore")
            return ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return None


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of `node` and of the classes and functions inside it, in source order."""
    if isinstance(node, _DOC_NODES):
        doc = ast.get_docstring(node, clean=True)  # clean=True applies inspect.cleandoc
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _source_files(root: Path) -> Iterator[Path]:
    """The `.py` files under `root` in sorted order, without the skipped directories."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _pydoc_topics(root: Path) -> dict[str, str]:
    """The `topics` dict of pydoc_data/topics.py, read with literal_eval ({} if unreadable)."""
    tree = _parse(root / "pydoc_data" / "topics.py")
    for stmt in tree.body if tree else []:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in stmt.targets
        ):
            try:
                topics = ast.literal_eval(stmt.value)
            except ValueError:
                return {}
            return {k: v for k, v in topics.items() if isinstance(v, str)}
    return {}


def stdlib_documents(min_chars: int = 200, root: str | Path | None = None) -> Iterator[dict]:
    """Yield `{"id": dotted module name, "text": docstrings}` per standard library module.

    Empty documents, documents shorter than `min_chars` and files that fail to decode or
    parse are skipped. `root` defaults to `sysconfig.get_paths()["stdlib"]`. The pydoc help
    topics follow the modules, one document each, with ids like `pydoc_data.topics.assert`.
    """
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    for path in _source_files(root):
        tree = _parse(path)
        if tree is None:
            continue
        text = "\n\n".join(_docstrings(tree))
        if text and len(text) >= min_chars:
            yield {"id": _module_name(root, path), "text": text}
    for key, value in sorted(_pydoc_topics(root).items()):
        text = value.strip()
        if text and len(text) >= min_chars:
            yield {"id": f"pydoc_data.topics.{key}", "text": text}


def write_stdlib_corpus(path: str | Path, max_chars: int | None = None) -> dict:
    """Write the documents as JSONL (`{"id": ..., "text": ...}` per line); return counts.

    With `max_chars`, writing stops before the first document that would take the total
    text past it. Returns `{"documents": n, "characters": total text characters}`.
    """
    if max_chars is not None and max_chars <= 0:
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars}")
    documents = characters = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in stdlib_documents():
            if max_chars is not None and characters + len(doc["text"]) > max_chars:
                break
            f.write(json.dumps({"id": doc["id"], "text": doc["text"]}) + "\n")
            documents += 1
            characters += len(doc["text"])
    return {"documents": documents, "characters": characters}
