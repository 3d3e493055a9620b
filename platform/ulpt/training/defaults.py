"""Learning rates per method, and the one place a fit's unset `lr` becomes a number.

The measured rates are the ones the accuracy benchmark's validation sweep chose on SmolLM2-135M
(`benchmarks/results/accuracy.json`, `chosen_lr`; table in docs/accuracy.md): with the paper's 1e-2
and a short budget, PT and ULPT r=2 ended at chance on a two-label task. The paper's value stays
available as `preset: paper`.
"""

from __future__ import annotations

from ulpt.adapters import AdapterSpec
from ulpt.training.config import TrainConfig

PAPER_LR = 1e-2
"""The ULPT paper's peak rate for ULPT and PT on Llama."""

MEASURED_LR: dict[str, float] = {"pt": 0.03, "dpt": 0.3, "lopt1": 0.3, "lopt2": 0.3}
"""Methods without a rank band: the rate chosen on validation (`chosen_lr`)."""

ULPT_LR_BY_RANK: tuple[tuple[int, float], ...] = ((16, 0.3), (1 << 30, 0.1))
"""ULPT by rank band (upper bound inclusive): r=2 and r=16 chose 0.3, r=64 chose 0.1."""


def default_lr(spec: AdapterSpec, preset: str = "measured") -> float:
    """The peak rate a fit of `spec` trains with when its config names none."""
    if preset == "paper":
        return PAPER_LR
    if spec.method == "ulpt":
        return next(lr for bound, lr in ULPT_LR_BY_RANK if spec.rank <= bound)
    return MEASURED_LR.get(spec.method, PAPER_LR)  # a method never measured keeps the paper's rate


def resolve(config: TrainConfig, spec: AdapterSpec) -> TrainConfig:
    """`config` with its peak rate filled in, so the recorded config shows the rate actually used.

    A list (a sweep) stays a list: each candidate gets one of its values (`ulpt.training.sweep`).
    """
    if config.lr is not None:
        return config
    return config.model_copy(update={"lr": default_lr(spec, config.preset)})
