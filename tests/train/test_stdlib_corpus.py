"""The standard-library corpus: docstrings gathered with `ast` (nothing imported), in a fixed
order, from the real standard library and from a small made-up one."""

from __future__ import annotations

import inspect
import json
import sys
import sysconfig
from itertools import islice
from pathlib import Path

import pytest

from llmsys.train.stdlib_corpus import _pydoc_topics, stdlib_documents, write_stdlib_corpus

STDLIB = Path(sysconfig.get_paths()["stdlib"])

MODULE = '''"""A module docstring
    that spans two lines."""


class Thing:
    """A thing.

        Indented detail.
    """

    def method(self):
        """What the method does."""


def helper():
    """Helps."""
'''


def make_fake_stdlib(root: Path) -> None:
    for name in ("antigravity.py", "this.py"):  # both do things when imported
        (root / name).write_bytes((STDLIB / name).read_bytes())
    (root / "zeta.py").write_text(MODULE)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text('"""The package."""\n')
    (root / "pkg" / "mod.py").write_text('"""A module in a package."""\n')
    (root / "pkg" / "tests").mkdir()
    (root / "pkg" / "tests" / "test_mod.py").write_text('"""Skipped: a test."""\n')
    (root / "site-packages").mkdir()
    (root / "site-packages" / "other.py").write_text('"""Skipped: third party."""\n')
    (root / "broken.py").write_text('"""Never read."""\ndef (:\n')
    (root / "latin.py").write_bytes(b'"""caf\xe9"""\n')  # not UTF-8 and no coding line
    (root / "pydoc_data").mkdir()
    (root / "pydoc_data" / "topics.py").write_text(
        "topics = {'while': 'The while statement\\n', 'assert': 'The assert statement\\n'}\n")


def test_made_up_stdlib(tmp_path: Path) -> None:
    make_fake_stdlib(tmp_path)
    already = {"antigravity", "this"} & set(sys.modules)
    docs = list(stdlib_documents(min_chars=0, root=tmp_path))
    assert [d["id"] for d in docs] == [  # a directory's files before its subdirectories
        "antigravity", "zeta", "pkg", "pkg.mod", "pydoc_data.topics.assert",
        "pydoc_data.topics.while"]
    assert docs[1]["text"] == "\n\n".join(inspect.cleandoc(d) for d in [
        "A module docstring\n    that spans two lines.", "A thing.\n\n    Indented detail.\n",
        "What the method does.", "Helps."])
    assert docs[4]["text"] == "The assert statement"
    assert {"antigravity", "this"} & set(sys.modules) == already
    assert [d["id"] for d in stdlib_documents(min_chars=20, root=tmp_path)] == [
        "antigravity", "zeta", "pkg.mod", "pydoc_data.topics.assert"]  # "The while ..." is 19
    with pytest.raises(ValueError, match="min_chars"):
        next(stdlib_documents(min_chars=-1))


def test_real_stdlib_documents() -> None:
    first = list(islice(stdlib_documents(), 40))
    assert first == list(islice(stdlib_documents(), 40))
    assert len({d["id"] for d in first}) == 40
    assert all(isinstance(d["text"], str) and len(d["text"]) >= 200 for d in first)
    assert sum(len(d["text"]) for d in first) > 50_000
    parts = {part for d in first for part in d["id"].split(".")}
    assert not parts & {"test", "tests", "idlelib", "site-packages"}
    assert "antigravity" not in sys.modules


def test_real_pydoc_topics() -> None:
    topics = _pydoc_topics(STDLIB)
    assert len(topics) > 50 and "assert" in topics
    assert sum(len(text) for text in topics.values()) > 200_000


def test_write_stdlib_corpus(tmp_path: Path) -> None:
    path = tmp_path / "stdlib.jsonl"
    stats = write_stdlib_corpus(path, max_chars=30_000)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert stats == {"documents": len(rows), "characters": sum(len(r["text"]) for r in rows)}
    assert 0 < stats["characters"] <= 30_000
    assert set(rows[0]) == {"id", "text"}
    with pytest.raises(ValueError, match="max_chars"):
        write_stdlib_corpus(path, max_chars=0)
