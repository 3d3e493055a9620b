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
    """Chooses each row's next token with its own parameters and generator, on the logits' device.

    Greedy rows take the argmax; every other row samples with its own generator (seeded from its
    `seed`, else at random), so a seeded row draws the same tokens alone or in any batch. All of it
    is tensor ops on the device: the caller's one read of the chosen tokens is the step's only sync.
    """

    def __init__(self, params: list[SamplingParams]) -> None:
        self.params = params
        self.seeds = [None if p.greedy else (p.seed if p.seed is not None else torch.seed()) for p in params]
        self.generators: list[torch.Generator | None] = [None] * len(params)  # made at first use
        self._rows: dict[str, torch.Tensor] | None = None  # per-row parameters on the device

    def select(self, rows: list[int]) -> RowSampler:
        """The sampler of a batch reduced to `rows`; each kept row keeps its generator's state."""
        kept = RowSampler.__new__(RowSampler)
        kept.params = [self.params[k] for k in rows]
        kept.seeds = [self.seeds[k] for k in rows]
        kept.generators = [self.generators[k] for k in rows]
        kept._rows = None
        return kept

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> next token ids [B], on the logits' device."""
        greedy = logits.argmax(dim=-1)
        sampled = [i for i, seed in enumerate(self.seeds) if seed is not None]
        if not sampled:
            return greedy
        rows = self._device_rows(sampled, logits.device)
        probs = torch.softmax(
            logits.index_select(0, rows["index"]).float() / rows["temperature"][:, None], -1
        )
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < rows["top_p"][:, None]  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
        # One exponential draw per row from its own generator: argmax p / E with E ~ Exp(1) samples p.
        race = torch.stack(
            [
                torch.empty(probs.shape[-1], device=probs.device).exponential_(
                    generator=self._generator(i, probs.device)
                )
                for i in sampled
            ]
        )
        return greedy.index_copy(0, rows["index"], (probs / race).argmax(dim=-1))

    def _generator(self, row: int, device: torch.device) -> torch.Generator:
        gen = self.generators[row]
        if gen is None:
            seed = self.seeds[row]
            assert seed is not None
            gen = self.generators[row] = torch.Generator(device=device).manual_seed(seed)
        return gen

    def _device_rows(self, sampled: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        """The sampled rows' indices, temperatures and top_p on `device`, copied once per batch shape."""
        if self._rows is None or self._rows["index"].device != device:
            values = [[float(i), self.params[i].temperature, self.params[i].top_p] for i in sampled]
            table = torch.tensor(values, dtype=torch.float32, device="cpu")
            table = table.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else table
            self._rows = {
                "index": table[:, 0].long(),
                "temperature": table[:, 1],
                "top_p": table[:, 2],
            }
        return self._rows
