"""Generated tokens as text, one token at a time, without decoding the whole output at every step.

Decoding all of a row's tokens after each new one costs O(n) per token, O(n^2) per answer. As in
vLLM's incremental detokenizer, each step decodes only a short window: the tokens since the last
point where the text ended on a whole character (`prefix_offset`), split at the tokens added since
(`read_offset`). The new text is the window's text minus its first part's text; a window that ends
inside a multi-byte character (a trailing U+FFFD) waits for the next token. Stop strings are looked
for only over the new text plus the longest stop's length before it, since no stop occurred earlier.

Invariant, for every prefix of the tokens: `text + pending == tokenizer.decode(token_ids,
skip_special_tokens=True)`, where `pending` is the window's undecided tail (it ends in U+FFFD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
"""What a decoder writes for bytes that do not (yet) form a character."""


class IncrementalDetokenizer:
    """One row's generated text and the first stop string in it."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.token_ids: list[int] = []
        self.text = ""
        """Text of the tokens up to `read_offset`: whole characters only."""
        self.pending = ""
        """Text of the tokens after `read_offset` while it ends inside a character (with its U+FFFD)."""
        self.stop_at: int | None = None
        """Where the first stop string begins in `full_text`, once one has appeared."""
        self.decoded_tokens = 0
        """Tokens handed to the tokenizer so far: stays linear in the output length."""
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def full_text(self) -> str:
        """Everything decoded so far: equals one decode of all `token_ids`."""
        return self.text + self.pending

    def extend(self, tokens: Sequence[int]) -> None:
        """Add tokens (one per step while decoding, or many at once) and look for a stop string."""
        if not tokens:
            return
        searched_from = max(0, len(self.text) - self.longest_stop + 1)
        self.token_ids.extend(tokens)
        prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        window_text = self._decode(self.token_ids[self._prefix_offset :])
        new_text = window_text[len(prefix_text) :]
        if window_text.endswith(REPLACEMENT) or not window_text.startswith(prefix_text):
            self.pending = new_text  # an unfinished character: decide once the next token completes it
        else:
            self.text += new_text
            self.pending = ""
            self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        if self.stop and self.stop_at is None:
            self.stop_at = _first_stop(self.full_text, self.stop, searched_from)

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        self.decoded_tokens += len(ids)
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """The earliest index at or after `start` where any stop string begins, or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_prefix_overlap(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string (text to hold back)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
