"""The text of one completion as tokens arrive: incremental detokenization plus stop strings.

`OutputText.push(token_id)` returns the text that is safe to show now. Text that could be
the start of a stop string is held back until it is clearly not one, so a streaming client
never sees any part of a stop string; when a stop string appears, the text ends before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmsys.model.tokenizer import IncrementalDetokenizer, Tokenizer


class OutputText:
    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stop: Sequence[str],
                 skip_special_tokens: bool = True):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
        self.stop = list(stop)
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.emitted = 0  # characters of `text` already returned
        self.stop_hit: str | None = None

    def push(self, token_id: int, last: bool = False) -> str:
        """Add a token; `last` flushes held-back text. Returns the text to emit now."""
        searched_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += self.detokenizer.push(token_id)
        if last:
            self.text += self.detokenizer.flush()
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, searched_from)) != -1]
        if hits:
            cut, self.stop_hit = min(hits)
            self.text = self.text[:cut]
            last = True
        safe = len(self.text) if last else len(self.text) - self._partial_stop_len()
        delta = self.text[self.emitted:safe]
        self.emitted = max(self.emitted, safe)
        return delta

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
