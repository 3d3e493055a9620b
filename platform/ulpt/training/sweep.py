"""Sweeps packed into one run: a fit with `lr: [a, b, c]` (and/or `rank: [...]`, `n_tokens: [...]`)
trains one candidate per combination, side by side in the same forward passes (candidates of one
shape share stacks), and only the best on validation remains.

A candidate is an ordinary fit with a key of its own (`key@lr=a,rank=r`) and its fit's `group` key,
so it sees its rows in the same seeded order the fit would alone: the packed sweep equals the
candidates trained one by one. Candidates of another rank or prompt length are adapters of another
shape; the winner is registered with its own spec. Every candidate runs to its end (no successive
halving): with the benchmark's short budgets the ranking at a midpoint is mostly noise, and dropping
a candidate saves nothing until its whole stack row is idle.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ulpt.training.api import FitRequest
    from ulpt.training.packed import FitState


def candidate_key(key: str, lr: float | None = None, **sizes: int) -> str:
    swept = ([f"lr={lr:g}"] if lr is not None else []) + [f"{k}={v}" for k, v in sizes.items()]
    return f"{key}@{','.join(swept)}"


def expand(request: FitRequest) -> list[FitRequest]:
    """One request per combination of the swept values; a fit without a sweep is the request itself.

    A rank sweep of a method without a rank (pt) trains one candidate per other value, not copies.
    """
    config = request.config
    if not config.is_sweep:
        return [request]
    rates: list[float | None] = list(config.lr) if isinstance(config.lr, list) else [None]
    sizes: dict[str, list[int]] = {
        field: list(dict.fromkeys(values))
        for field, values in (("rank", config.rank), ("n_tokens", config.n_tokens))
        if values is not None and (field != "rank" or request.spec.is_low_rank)
    }
    out = []
    shapes = itertools.product(*sizes.values())
    for lr, values in itertools.product(rates, list(shapes)):
        chosen = dict(zip(sizes, values))
        update: dict[str, object] = {"rank": None, "n_tokens": None}
        if lr is not None:
            update["lr"] = lr
        out.append(
            replace(
                request,
                key=candidate_key(request.key, lr, **chosen) if lr is not None or chosen else request.key,
                spec=request.spec.model_copy(update=chosen),
                config=config.model_copy(update=update),
            )
        )
    return out


def is_sweep(request: FitRequest) -> bool:
    return request.config.is_sweep


def score(fit: FitState) -> float | None:
    """Higher is better: the best checkpoint's selection metric (accuracy, or minus the loss)."""
    if fit.status != "done" or fit.best is None:
        return None
    key = fit.select_key(fit.best)
    return fit.best[key] if key == "eval_accuracy" else -fit.best[key]


def pick(candidates: Sequence[FitState]) -> FitState:
    """The winner under its fit's own key, carrying the sweep: every candidate's values and metrics.

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
    spec = fit.adapter.spec
    entry: dict[str, Any] = {
        "lr": fit.config.peak_lr,
        "rank": spec.rank,
        "n_tokens": spec.n_tokens,
        "status": fit.status,
    }
    if fit.best is not None:
        entry.update({k: v for k, v in fit.best.items() if k != "step"}, best_step=int(fit.best["step"]))
    if fit.error:
        entry["error"] = fit.error
    return entry
