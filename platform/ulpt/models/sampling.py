"""Per-row decoding parameters and next-token choice, so rows of one batch sample independently."""

from __future__ import annotations

import torch
from pydantic import Field

from ulpt.validation import SpecModel

GREEDY_BELOW = 1e-6
"""A temperature or top_p below this decodes greedily, the limit both tend to: float32 logits divided
by a temperature like 1e-40 overflow to inf/NaN, and a top_p that small keeps only the top token."""


class SamplingParams(SpecModel):
    """How one row is decoded; every row of a mixed batch has its own."""

    max_new_tokens: int = Field(default=16, ge=0, le=100_000)
    """Upper bound on generated tokens."""
    temperature: float = Field(default=0.0, ge=0.0, le=100.0)
    """0 means greedy; otherwise logits are divided by it before sampling."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    seed: int | None = None
    """Seeds this row's sampler, so its output does not depend on the other rows of the batch."""
    stop: tuple[str, ...] = Field(default=(), strict=False)
    """Generation ends before the first occurrence of any of these strings."""
    ignore_eos: bool = False
    """Keep decoding past the end-of-sequence token (to max_new_tokens): for load tests and benchmarks."""

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_p < GREEDY_BELOW


class RowSampler:
    """Chooses each row's next token with its own parameters and generator."""

    def __init__(self, params: list[SamplingParams]) -> None:
        self.params = params
        self.generators = [
            torch.Generator().manual_seed(p.seed if p.seed is not None else torch.seed())
            if not p.greedy
            else None
            for p in params
        ]

    def select(self, rows: list[int]) -> RowSampler:
        """The sampler of a batch reduced to `rows`; each kept row keeps its generator's state."""
        kept = RowSampler.__new__(RowSampler)
        kept.params = [self.params[k] for k in rows]
        kept.generators = [self.generators[k] for k in rows]
        return kept

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> next token ids [B]."""
        greedy = logits.argmax(dim=-1)
        if all(g is None for g in self.generators):
            return greedy
        out = greedy.clone()
        for i, (p, gen) in enumerate(zip(self.params, self.generators)):
            if gen is None:
                continue
            probs = torch.softmax(logits[i].float().cpu() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            out[i] = torch.multinomial(probs, 1, generator=gen).item()
        return out
