"""Fixtures shared across the suite: the tiny tokenizer, in llmsys and in transformers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny tokenizer (treat as read-only; copy it to change it)."""
    from llmsys.testing import make_tiny_tokenizer  # here, so tests that need none load no torch

    path = tmp_path_factory.mktemp("tiny_tokenizer")
    make_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tok(tiny_dir: Path):
    from llmsys.model.tokenizer import Tokenizer

    return Tokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="session")
def hf(tiny_dir: Path):
    """The same tokenizer loaded by transformers (the reference)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)
