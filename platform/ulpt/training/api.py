"""`train_adapter` and `train_adapters`: the in-process training API (one fit, or many packed)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.errors import UlptError
from ulpt.models.base import BaseModel
from ulpt.training import defaults, sweep
from ulpt.training.config import TrainConfig
from ulpt.training.examples import check_rows, label_set, tokenize
from ulpt.training.packed import FitState, PackedTrainer
from ulpt.training.verdict import verdict_metrics


@dataclass
class FitRequest:
    """One adapter to train: its spec, its rows and its hyperparameters."""

    key: str
    spec: AdapterSpec
    train_rows: Sequence[Mapping[str, Any]]
    eval_rows: Sequence[Mapping[str, Any]] | None = ()
    """Held-out rows for the best-checkpoint metrics; None or empty: no held-out evaluation."""
    config: TrainConfig = field(default_factory=TrainConfig)
    """An lr, rank or n_tokens list makes this a sweep (`ulpt.training.sweep`); no lr: the method's
    default."""


class TrainingFailed(UlptError):
    """A fit that could not be trained (its rows, or a loss that diverged)."""


def prepare_fit(model: BaseModel, request: FitRequest, group: str | None = None) -> FitState:
    """Validate and tokenize a fit's rows and create its adapter; raises UlptError on bad input.

    The config is resolved here, for every caller: an unset lr becomes the method's default, so
    the fit's config (recorded with its adapter) shows the rate it trained with. `group`: the fit
    a sweep candidate belongs to.
    """
    if request.config.is_sweep:
        raise TrainingFailed(f"fit {request.key}: a sweep trains as candidates (ulpt.training.sweep.expand)")
    request.spec.check_hidden_size(model.hidden_size)
    train = check_rows(request.train_rows, "train")
    if not train:
        raise TrainingFailed(f"fit {request.key}: no training rows")
    evals = check_rows(request.eval_rows or (), "eval")
    adapter = Adapter.create(
        request.spec,
        model.hidden_size,
        token_embeddings=model.token_embeddings if request.spec.init == "vocab" else None,
        base_model=model.name,
    ).to(model.device)  # float32 master weights whatever the base's dtype; stacked at its first step
    return FitState(
        key=request.key,
        adapter=adapter,
        config=defaults.resolve(request.config, request.spec),
        group=group or request.key,
        train=tokenize(model, train, request.spec.n_tokens),
        eval=tokenize(model, evals, request.spec.n_tokens),
        labels=label_set(train + evals),
    )


def fit_metrics(fit: FitState) -> dict[str, Any]:
    """What a finished fit reports: the best checkpoint's held-out metrics and its curve, the rate it
    trained with, its zero-shot baseline and verdict (`ulpt.training.verdict`), and a sweep's record."""
    train_losses = fit.train_losses
    metrics: dict[str, Any] = {
        "steps": fit.step,
        "train_loss": sum(train_losses[-10:]) / max(1, len(train_losses[-10:])) if train_losses else None,
        "train_seconds": round((fit.finished or time.monotonic()) - fit.started, 3),
        "train_curve": [round(x, 5) for x in train_losses],
        "eval_history": fit.history,
    }
    if fit.best is not None:
        metrics.update({k: v for k, v in fit.best.items() if k != "step"}, best_step=int(fit.best["step"]))
    metrics["lr"] = fit.config.peak_lr
    metrics.update(verdict_metrics(fit.best, fit.zero_shot, len(fit.held_out)))
    if fit.sweep is not None:
        metrics["sweep"] = fit.sweep
    return metrics


def train_adapters(
    model: BaseModel,
    requests: Sequence[FitRequest],
    *,
    max_rows_per_forward: int = 64,
    progress: bool = False,
) -> dict[str, tuple[Adapter | None, dict[str, Any]]]:
    """Train many adapters packed into shared forward passes; a failed fit fails alone.

    Returns {key: (adapter, metrics)}; a failed fit has adapter None and metrics {"error": reason}.
    A sweep (lr list) returns its winner under the fit's key, its metrics holding the whole "sweep".
    """
    fits = [prepare_fit(model, c, group=r.key) for r in requests for c in sweep.expand(r)]
    trainer = PackedTrainer(model, max_rows_per_forward=max_rows_per_forward)
    total = sum(f.config.steps for f in fits)
    with _progress(progress) as bar:
        task = bar.add_task("training", total=total)

        def on_step(active: Sequence[FitState]) -> None:
            bar.update(task, completed=sum(f.step if f.status == "running" else f.config.steps for f in fits))

        trainer.run(fits, on_step=on_step)
    groups: dict[str, list[FitState]] = {}
    for f in fits:
        groups.setdefault(f.group, []).append(f)
    winners = [sweep.pick(group) for group in groups.values()]
    return {
        f.group: (f.adapter, fit_metrics(f))
        if f.status == "done"
        else (None, {"error": f.error, "steps": f.step})
        for f in winners
    }


def train_adapter(
    model: BaseModel,
    spec: AdapterSpec,
    train_rows: Sequence[Mapping[str, Any]],
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    *,
    progress: bool = False,
    **hyperparams: Any,
) -> tuple[Adapter, dict[str, Any]]:
    """Train one adapter; `hyperparams` are TrainConfig fields (steps, lr, batch_size, ...)."""
    request = FitRequest("adapter", spec, train_rows, eval_rows or (), TrainConfig.from_dict(hyperparams))
    adapter, metrics = train_adapters(model, [request], progress=progress)["adapter"]
    if adapter is None:
        raise TrainingFailed(f"training failed: {metrics['error']}")
    return adapter, metrics


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
