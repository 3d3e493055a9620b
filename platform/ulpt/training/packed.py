"""Many fits stepped together: one forward/backward through the shared frozen base per step.

Each fit owns its adapter, AdamW state, learning-rate schedule, step count, clipping and early
stopping. The packed loss is the SUM of each fit's mean row loss, so (parameters being disjoint)
one backward pass yields exactly the gradient each fit would get alone: a fit's curve does not
depend on which fits it was packed with, beyond float noise.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ulpt.adapters import Adapter
from ulpt.adapters.projection import make_generator
from ulpt.models.base import BaseModel
from ulpt.models.batch import plan_chunks
from ulpt.training.config import TrainConfig
from ulpt.training.evaluate import EvalItem, evaluate
from ulpt.training.examples import Example


@dataclass
class FitState:
    """One adapter being trained, with everything that must stay private to it."""

    key: str
    adapter: Adapter
    config: TrainConfig
    train: list[Example]
    eval: list[Example] = field(default_factory=list)
    labels: list[str] | None = None
    step: int = 0
    status: str = "running"  # running | done | failed
    error: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per evaluation
    train_losses: list[float] = field(default_factory=list)  # one per step
    best: dict[str, float] | None = None
    evals_without_gain: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def __post_init__(self) -> None:
        params = list(self.adapter.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        warmup, total = self.config.warmup, self.config.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
        )
        self._order = make_generator(self.config.seed, f"order:{self.key}")
        self._queue: list[int] = []
        self._best_params = copy.deepcopy(self.adapter.state_dict())

    def next_batch(self) -> list[Example]:
        """The next `batch_size` rows, epoch by epoch in a seeded order of this fit's own."""
        batch: list[Example] = []
        while len(batch) < self.config.batch_size:
            if not self._queue:
                self._queue = torch.randperm(len(self.train), generator=self._order, device="cpu").tolist()
            batch.append(self.train[self._queue.pop()])
        return batch

    def fail(self, reason: str) -> None:
        self.status, self.error, self.finished = "failed", reason, time.monotonic()

    def record_eval(self, metrics: dict[str, float]) -> None:
        """Keep the best checkpoint and count evaluations without improvement."""
        self.history.append({"step": self.step, **metrics})
        key = self.select_key(metrics)
        better = self.best is None or (
            metrics[key] > self.best[key] if key == "eval_accuracy" else metrics[key] < self.best[key]
        )
        if better:
            self.best = {"step": self.step, **metrics}
            self._best_params = copy.deepcopy(self.adapter.state_dict())
            self.evals_without_gain = 0
        else:
            self.evals_without_gain += 1

    def select_key(self, metrics: dict[str, float]) -> str:
        if self.config.select_on == "auto":
            return "eval_accuracy" if "eval_accuracy" in metrics else "eval_loss"
        return self.config.select_on

    def finish(self) -> None:
        if self.best is not None:
            self.adapter.load_state_dict(self._best_params)
        self.status, self.finished = "done", time.monotonic()


class PackedTrainer:
    """Steps a set of fits together on one frozen base model."""

    def __init__(
        self, model: BaseModel, max_rows_per_forward: int = 64, max_tokens_per_forward: int = 4096
    ) -> None:
        self.model = model
        self.max_rows = max_rows_per_forward
        self.max_tokens = max_tokens_per_forward

    def train_step(self, fits: Sequence[FitState]) -> dict[str, float]:
        """One optimizer step for every running fit; returns each fit's training loss."""
        active = [f for f in fits if f.status == "running" and f.step < f.config.steps]
        rows: list[tuple[FitState, Example]] = [(f, ex) for f in active for ex in f.next_batch()]
        slot = {f.key: i for i, f in enumerate(active)}
        device = self.model.device
        fit_loss = torch.zeros(len(active), dtype=torch.float32, device=device)  # summed on the device
        lengths = [f.adapter.spec.n_tokens + len(ex.input_ids) + len(ex.target_ids) for f, ex in rows]
        for indices in plan_chunks(lengths, self.max_rows, self.max_tokens):
            chunk = [rows[i] for i in indices]
            prompts = {f.key: f.adapter.prompt_embeddings() for f in {id(f): f for f, _ in chunk}.values()}
            row_loss = self._row_losses(chunk, prompts)  # [R] float32, on the model's device
            # Built where the loss lives: a host tensor here breaks every packed step on a GPU.
            weights = row_loss.new_tensor([1.0 / f.config.batch_size for f, _ in chunk])
            owner = torch.tensor([slot[f.key] for f, _ in chunk], dtype=torch.long, device=device)
            # A non-finite row makes its fit's sum non-finite (the fit fails) and adds nothing to the graph.
            fit_loss.index_add_(0, owner, row_loss.detach() * weights)
            finite = torch.isfinite(row_loss.detach())
            total = (torch.where(finite, row_loss, torch.zeros_like(row_loss)) * weights).sum()
            if total.requires_grad:
                total.backward()
        losses = dict(zip(slot, fit_loss.tolist()))  # one device sync per step, not one per row
        for fit in active:
            if not math.isfinite(losses[fit.key]):
                fit.fail(f"training loss became non-finite at step {fit.step + 1}")
                continue
            if fit.config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(fit.adapter.parameters(), fit.config.max_grad_norm)
            fit.optimizer.step()
            fit.scheduler.step()
            fit.optimizer.zero_grad(set_to_none=True)
            fit.step += 1
            fit.train_losses.append(losses[fit.key])
        return losses

    def _row_losses(
        self, chunk: Sequence[tuple[FitState, Example]], prompts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        logp, mask = self.model.target_logprobs(
            [prompts[f.key] for f, _ in chunk],
            [ex.input_ids for _, ex in chunk],
            [ex.target_ids for _, ex in chunk],
        )
        return -logp.sum(1) / mask.sum(1)

    def evaluate(self, fits: Sequence[FitState]) -> dict[str, dict[str, float]]:
        """Held-out metrics of every fit, batched across fits."""
        items = [EvalItem(f.key, f.adapter, f.eval[: f.config.max_eval_rows or None], f.labels) for f in fits]
        return evaluate(self.model, items, self.max_rows, self.max_tokens)

    def run(
        self,
        fits: Sequence[FitState],
        on_step: Callable[[Sequence[FitState]], None] | None = None,
        on_fit_done: Callable[[FitState], None] | None = None,
    ) -> None:
        """Train every fit to its end (steps, early stop or failure), evaluating on schedule."""
        pending = list(fits)
        while pending:
            ended = self.advance(pending)
            if on_step:
                on_step(pending)
            for fit in ended:
                if on_fit_done:
                    on_fit_done(fit)
            pending = [f for f in pending if f.status == "running"]

    def advance(self, fits: Sequence[FitState]) -> list[FitState]:
        """One step of every running fit, its scheduled evaluations and stopping; returns the ended fits.

        `run` loops over it; a caller that keeps a pack full (the Ray worker) adds fits between calls.
        """
        self.train_step(fits)
        due = [
            f
            for f in fits
            if f.status == "running"
            and f.eval
            and (f.step % f.config.eval_every == 0 or f.step >= f.config.steps)
        ]
        if due:
            results = self.evaluate(due)
            for fit in due:
                fit.record_eval(results[fit.key])
        for fit in fits:
            stop_early = (
                fit.config.early_stopping_patience is not None
                and fit.evals_without_gain >= fit.config.early_stopping_patience
            )
            if fit.status == "running" and (fit.step >= fit.config.steps or stop_early):
                fit.finish()
        return [f for f in fits if f.status != "running"]
