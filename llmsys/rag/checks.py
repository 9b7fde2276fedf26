"""Argument checks shared by the RAG modules: each raises ValueError naming the value and
what is allowed.

    check_int("k", k, 1)                       # "k must be an int >= 1, got 0"
    check_choice("mode", mode, ("bm25", "dense", "hybrid"))
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_choice", "check_int"]


def check_int(name: str, value: object, minimum: int) -> None:
    """`value` must be an int (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """`value` must be one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
