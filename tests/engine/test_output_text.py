"""Streaming text with stop strings: nothing of a stop string is ever emitted."""

from __future__ import annotations

import pytest

from llmsys.engine.output_text import OutputText


@pytest.fixture(scope="module")
def tokenizer(tok):
    return tok


def _stream(tokenizer, text, stop):
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = OutputText(tokenizer, [], stop)
    pieces = []
    for i, t in enumerate(ids):
        pieces.append(out.push(t, last=i == len(ids) - 1))
        if out.stop_hit is not None:  # generation ends here
            break
    return pieces, out


@pytest.mark.parametrize("text, stop, expected", [
    ("the end is near. STOP and more", ["STOP"], "the end is near. "),
    ("abc déjà vu xyz", ["vu"], "abc déjà "),
    ("two stops: B then A", ["A", "B"], "two stops: "),  # the earliest one wins
    ("no stop string here at all", ["zzz"], "no stop string here at all"),
    ("held back: the en", ["the end"], "held back: the en"),  # a prefix at the very end
])
def test_stop_strings(tokenizer, text, stop, expected):
    pieces, out = _stream(tokenizer, text, stop)
    assert "".join(pieces) == expected
    assert out.stop_hit == (None if expected == text else min(
        (text.find(s), s) for s in stop if s in text)[1])
    # No emitted prefix ever contains the start of a stop string that later matched.
    shown = ""
    for p in pieces:
        shown += p
        assert expected.startswith(shown)


def test_partial_stop_is_held_then_released(tokenizer):
    ids = tokenizer.encode("the end is near", add_special_tokens=False)
    out = OutputText(tokenizer, [], ["end STOP"])
    shown = ""
    for t in ids:
        shown += out.push(t)
        assert not shown.endswith(("e", "en", "end", "end ")) or shown.endswith("near")
    shown += out.push(tokenizer.encode("!", add_special_tokens=False)[0], last=True)
    assert shown == "the end is near!"
