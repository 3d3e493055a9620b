"""A row's generated output: tokens, text cut before the first stop string, and why it ended."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ulpt.errors import ModelNotFoundError
from ulpt.models.detokenize import IncrementalDetokenizer
from ulpt.models.sampling import SamplingParams


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


class OutputText:
    """One row's output: its tokens, its text cut before the first stop string, whether it stopped.

    Text comes from an `IncrementalDetokenizer`, so following a row token by token stays linear in
    its length; without stop strings (and unless asked to) tokens are decoded only when the text is
    read. An EOS that ends the row is a token but not text; `ignore_eos` rows decode theirs as any other.
    """

    def __init__(
        self, tokenizer: Any, params: SamplingParams, eos_ids: Collection[int], *, every_token: bool = False
    ) -> None:
        """`every_token`: decode each token as it arrives, even without stop strings (to stream)."""
        self.params = params
        self.eos_ids = set() if params.ignore_eos else set(eos_ids)
        self.token_ids: list[int] = []
        self.detokenizer = IncrementalDetokenizer(tokenizer, params.stop)
        self.ended_by_eos = False
        self._decode_each = every_token or bool(self.detokenizer.stop)
        self._undecoded: list[int] = []

    def add(self, token: int) -> None:
        self.token_ids.append(token)
        if token in self.eos_ids:
            self.ended_by_eos = True
            return
        self._undecoded.append(token)
        if self._decode_each:
            self._decode()

    def _decode(self) -> None:
        self.detokenizer.extend(self._undecoded)
        self._undecoded = []

    @property
    def stopped(self) -> bool:
        """An EOS or a stop string ended the row."""
        return self.ended_by_eos or self.detokenizer.stop_at is not None

    @property
    def text(self) -> str:
        """Everything decoded so far, cut before the first stop string."""
        self._decode()
        return self.detokenizer.full_text[: self.detokenizer.stop_at]

    def generation(self) -> Generation:
        text = self.text
        return Generation(text, list(self.token_ids), "stop" if self.stopped else "length")


def eos_token_ids(hf_model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a generation: the generation config's, the model config's and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(hf_model, "generation_config", None), hf_model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ModelNotFoundError("the base model defines no end-of-sequence token")
    return ids
