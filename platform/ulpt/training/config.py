"""`TrainConfig`: the hyperparameters of one fit (defaults from the ULPT paper, decoder-only setting)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ulpt.errors import SpecError
from ulpt.validation import check_known_fields, check_number


@dataclass(frozen=True)
class TrainConfig:
    """How one adapter is trained; every fit packed in a batch may carry its own."""

    steps: int = 200
    """Optimizer steps."""
    lr: float = 1e-2
    """Peak AdamW learning rate (the paper: 1e-2 for ULPT and PT on Llama)."""
    batch_size: int = 4
    """Rows of this fit per step (the paper: 4 on Llama)."""
    warmup_steps: int | None = None
    """Linear warmup, then linear decay to 0; None means 6% of `steps`."""
    weight_decay: float = 1e-5
    """Decoupled AdamW decay, per fit (the official code's value)."""
    max_grad_norm: float | None = 1.0
    """Clip each fit's own gradient norm (never a global norm across packed fits)."""
    eval_every: int = 50
    """Evaluate on the held-out rows every this many steps (and at the end)."""
    early_stopping_patience: int | None = None
    """Stop a fit after this many evaluations without improvement; None trains all steps."""
    select_on: str = "auto"
    """Best checkpoint by eval_accuracy (label targets) or eval_loss; auto picks accuracy when it exists."""
    seed: int = 0
    """Seeds the order in which this fit sees its rows."""
    max_eval_rows: int | None = 200
    """Cap on held-out rows per evaluation, to keep evaluation cheap during training."""

    def __post_init__(self) -> None:
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_every", self.eval_every)
        check_number("lr", self.lr, gt=0, le=10)
        if self.warmup_steps is not None and (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise SpecError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        check_number("weight_decay", self.weight_decay, ge=0, lt=1)
        if self.max_grad_norm is not None:
            check_number("max_grad_norm", self.max_grad_norm, gt=0)
        if self.early_stopping_patience is not None:
            _positive_int("early_stopping_patience", self.early_stopping_patience)
        if self.select_on not in ("auto", "eval_loss", "eval_accuracy"):
            raise SpecError(f"select_on must be auto, eval_loss or eval_accuracy, got {self.select_on!r}")
        if self.max_eval_rows is not None:
            _positive_int("max_eval_rows", self.max_eval_rows)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(0.06 * self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_known_fields(cls, data, "training")
        return cls(**data)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{name} must be a positive integer, got {value!r}")
