"""`TrainConfig`: the hyperparameters of one fit (the ULPT paper's decoder-only setting, except the
learning rate, which defaults per method to the rate measured on SmolLM2: `ulpt.training.defaults`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from ulpt.validation import SpecModel

LearningRate = Annotated[float, Field(gt=0, le=10)]


def _rate_or_rates(value: Any) -> str:
    return "rate-list" if isinstance(value, (list, tuple)) else "one-rate"


LearningRates = Annotated[
    Annotated[LearningRate, Tag("one-rate")]
    | Annotated[list[LearningRate], Field(min_length=1, max_length=16), Tag("rate-list")],
    Discriminator(_rate_or_rates),
]
"""One peak rate, or a sweep's rates (each validated as a rate; the error names the one at fault)."""

SweptSizes = Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1, max_length=16)]
"""The values of an adapter field a sweep tries, one candidate each."""

MAX_CANDIDATES = 64
"""Candidates one fit may train (rates x ranks x prompt lengths): each takes a row of the pack."""
MAX_STEPS = 1_000_000
"""Most optimizer steps of one fit (the paper trains 30,000); a count past it is a typo or an attack."""
MAX_BATCH_SIZE = 4096
"""Most rows of one fit per step: a step holds its batch's row indices and activations in memory."""
MAX_EPOCHS = 10_000
"""Most passes over a fit's rows when the length is given in epochs."""
MAX_EVAL_ROWS = 100_000
"""Most held-out rows one evaluation may score."""
MAX_SEED = 2**63 - 1


class TrainConfig(SpecModel):
    """How one adapter is trained; every fit packed in a batch may carry its own."""

    steps: int = Field(default=200, ge=1, le=MAX_STEPS)
    """Optimizer steps."""
    lr: LearningRates | None = None
    """Peak AdamW learning rate; None: the method's measured default (see `preset`); a list: a sweep,
    one candidate per value trained packed, the best on validation registered."""
    rank: SweptSizes | None = None
    """A sweep over the adapter's rank r: one candidate per value (with every rate of `lr`), the best
    on validation registered; None trains the adapter's own rank. Ignored by pt, which has no rank."""
    n_tokens: SweptSizes | None = None
    """A sweep over the adapter's prompt length n, like `rank`; None trains the adapter's own n_tokens."""
    preset: Literal["measured", "paper"] = "measured"
    """Where an unset lr comes from: measured (per method, from the accuracy benchmark) or paper (1e-2)."""
    batch_size: int = Field(default=4, ge=1, le=MAX_BATCH_SIZE)
    """Rows of this fit per step (the paper: 4 on Llama)."""
    warmup_steps: int | None = Field(default=None, ge=0, le=MAX_STEPS)
    """Linear warmup, then linear decay to 0; None means 6% of `steps`."""
    weight_decay: float = Field(default=1e-5, ge=0, lt=1)
    """Decoupled AdamW decay, per fit (the official code's value)."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip each fit's own gradient norm (never a global norm across packed fits)."""
    eval_every: int = Field(default=50, ge=1, le=MAX_STEPS)
    """Evaluate on the held-out rows every this many steps (and at the end)."""
    early_stopping_patience: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    """Stop a fit after this many evaluations without improvement; None trains all steps."""
    select_on: Literal["auto", "eval_loss", "eval_accuracy"] = "auto"
    """Best checkpoint by eval_accuracy (label targets) or eval_loss; auto picks accuracy when it exists."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seeds the order in which this fit sees its rows."""
    max_eval_rows: int | None = Field(default=200, ge=1, le=MAX_EVAL_ROWS)
    """Cap on held-out rows per evaluation, to keep evaluation cheap during training."""

    @model_validator(mode="after")
    def _bounded_sweep(self) -> TrainConfig:
        sizes = [len(v) for v in (self.lr, self.rank, self.n_tokens) if isinstance(v, list)]
        if math.prod(sizes) > MAX_CANDIDATES:
            raise ValueError(
                f"a sweep of {' x '.join(map(str, sizes))} = {math.prod(sizes)} candidates per fit is more "
                f"than {MAX_CANDIDATES}; try fewer values"
            )
        return self

    @property
    def is_sweep(self) -> bool:
        return isinstance(self.lr, list) or self.rank is not None or self.n_tokens is not None

    @property
    def peak_lr(self) -> float:
        """The one rate this fit trains with; set once the config is resolved for its method."""
        if not isinstance(self.lr, float):
            raise ValueError(f"lr {self.lr!r} is resolved per fit before training (ulpt.training.defaults)")
        return self.lr

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(0.06 * self.steps)
