"""Learning-rate sweeps packed into one run: a fit with `lr: [a, b, c]` trains one candidate per
rate, side by side in the same stacks and forward passes, and only the best on validation remains.

A candidate is an ordinary fit with a key of its own (`key@lr=a`) and its fit's `group` key, so it
sees its rows in the same seeded order the fit would alone: the packed sweep equals the candidates
trained one by one. Every candidate runs to its end (no successive halving): with the benchmark's
short budgets the ranking at a midpoint is mostly noise, and dropping a candidate saves nothing
until its whole stack row is idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ulpt.training.api import FitRequest
    from ulpt.training.packed import FitState


def candidate_key(key: str, lr: float) -> str:
    return f"{key}@lr={lr:g}"


def expand(request: FitRequest) -> list[FitRequest]:
    """One request per rate of a sweep; a single rate (or none) is the request itself."""
    rates = request.config.lr
    if not isinstance(rates, list):
        return [request]
    return [
        replace(
            request, key=candidate_key(request.key, lr), config=request.config.model_copy(update={"lr": lr})
        )
        for lr in rates
    ]


def is_sweep(request: FitRequest) -> bool:
    return isinstance(request.config.lr, list)


def score(fit: FitState) -> float | None:
    """Higher is better: the best checkpoint's selection metric (accuracy, or minus the loss)."""
    if fit.status != "done" or fit.best is None:
        return None
    key = fit.select_key(fit.best)
    return fit.best[key] if key == "eval_accuracy" else -fit.best[key]


def pick(candidates: Sequence[FitState]) -> FitState:
    """The winner under its fit's own key, carrying the sweep: every candidate's rate and metrics.

    Ties go to the earlier rate in the list. Without held-out rows nothing can be compared: the
    lowest final training loss wins. If every candidate failed, the first failure is returned.
    """
    done = [f for f in candidates if f.status == "done"]
    if not done:
        candidates[0].key = candidates[0].group
        return candidates[0]

    def rank(fit: FitState) -> float:
        s = score(fit)
        if s is not None:
            return s
        return -(sum(fit.train_losses[-10:]) / max(1, len(fit.train_losses[-10:])))

    winner = max(done, key=rank)  # max keeps the first of equal scores
    if winner.key != winner.group:  # a candidate, not a fit trained on one rate
        winner.sweep = [_record(f) for f in candidates]
    winner.key = winner.group
    return winner


def _record(fit: FitState) -> dict[str, Any]:
    entry: dict[str, Any] = {"lr": fit.config.peak_lr, "status": fit.status}
    if fit.best is not None:
        entry.update({k: v for k, v in fit.best.items() if k != "step"}, best_step=int(fit.best["step"]))
    if fit.error:
        entry["error"] = fit.error
    return entry
