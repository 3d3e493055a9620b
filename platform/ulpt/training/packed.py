"""Many fits stepped together: one forward/backward through the shared frozen base per step.

Each fit keeps its own parameters, AdamW state, learning-rate schedule, step count, clipping and
early stopping; fits of one method and shape keep them as rows of shared stacked tensors
(`ulpt.training.stack`), so one vectorized update steps them all. The packed loss is the SUM of
each fit's mean row loss, so (parameters being disjoint) one backward pass yields exactly the
gradient each fit would get alone, and every per-fit quantity of the update (gradient norm, lr,
bias correction) is computed from its own row: a fit's curve does not depend on which fits it was
packed with, beyond float noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ulpt.adapters import Adapter
from ulpt.adapters.projection import make_generator
from ulpt.models.base import BaseModel
from ulpt.models.batch import plan_chunks
from ulpt.models.precision import check_trainable
from ulpt.models.transfer import Staging, host_to_device
from ulpt.training.config import TrainConfig
from ulpt.training.evaluate import EvalItem, evaluate
from ulpt.training.examples import Example
from ulpt.training.stack import FitStack, FitStacks


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
    group: str = ""
    """The fit this one is a sweep candidate of (its own key when it is not); seeds its row order."""
    sweep: list[dict[str, Any]] | None = None
    """A sweep's winner: every candidate's rate and best held-out metrics."""
    zero_shot: dict[str, float] | None = None
    """The base model without an adapter on this fit's held-out rows, evaluated once."""

    slot: tuple[FitStack, int] | None = field(default=None, repr=False)  # (stack, row) while training
    resumed_optimizer: dict[str, Any] | None = field(default=None, repr=False)
    """AdamW state from a checkpoint (`ulpt.training.checkpoint`), loaded when the fit joins a stack."""

    def __post_init__(self) -> None:
        self.group = self.group or self.key
        self.seek(0)
        self._best_params = self._snapshot()

    @property
    def best_params(self) -> dict[str, torch.Tensor]:
        """The parameters of the best evaluation so far (the initial ones before any)."""
        return self._best_params

    def restore_best(self, params: dict[str, torch.Tensor]) -> None:
        self._best_params = params

    def _snapshot(self) -> dict[str, torch.Tensor]:
        # clone, not deepcopy: a stacked parameter is a view, and deepcopy would copy the whole stack
        return {name: tensor.detach().clone() for name, tensor in self.adapter.state_dict().items()}

    def optimizer_state(self) -> dict[str, Any] | None:
        """This fit's AdamW state (step, exp_avg, exp_avg_sq per parameter), None before it trains."""
        return None if self.slot is None else self.slot[0].optimizer_state(self.slot[1])

    def leave_stack(self) -> None:
        """Give the adapter parameters of its own, so the stacked row can go to another fit."""
        if self.slot is not None:
            self.slot[0].leave(self)

    def next_batch(self) -> list[Example]:
        """The next `batch_size` rows, epoch by epoch in a seeded order of this fit's own."""
        return [self.train[i] for i in self._take(self.config.batch_size)]

    @property
    def cursor(self) -> int:
        """Rows this fit has drawn so far: with its seed, all that fixes the rows it sees next."""
        return self._cursor

    def seek(self, cursor: int) -> None:
        """Position the row order after `cursor` rows, as if they had been drawn (resuming a fit).

        The order is regenerated from the seed, epoch by epoch, so a resumed fit sees exactly the rows
        an uninterrupted one would.
        """
        self._order = make_generator(self.config.seed, f"order:{self.group}")
        self._queue: list[int] = []
        self._cursor = 0
        self._take(cursor)

    def _take(self, count: int) -> list[int]:
        rows: list[int] = []
        while len(rows) < count:
            if not self._queue:
                self._queue = self._epoch_order()
            take = min(count - len(rows), len(self._queue))
            rows += reversed(self._queue[-take:])  # popped from the end
            del self._queue[-take:]
        self._cursor += count
        return rows

    def _epoch_order(self) -> list[int]:
        if len(self.train) == 1:
            return [0]  # the only order there is, without a generator call every step
        return torch.randperm(len(self.train), generator=self._order, device="cpu").tolist()

    @property
    def held_out(self) -> list[Example]:
        """The rows every evaluation of this fit scores (the first `max_eval_rows` held-out rows)."""
        return self.eval[: self.config.max_eval_rows or None]

    def fail(self, reason: str) -> None:
        self.leave_stack()
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
            self._best_params = self._snapshot()
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
        self.leave_stack()
        self.status, self.finished = "done", time.monotonic()


ZERO_SHOT = "\0zero-shot:"
"""Evaluation key prefix of a fit group's base-model-only item (no fit key holds a NUL)."""


class PackedTrainer:
    """Steps a set of fits together on one frozen base model."""

    TOKENS_PER_ROW = 64
    """Default token budget per forward, per row of `max_rows_per_forward`: raising the rows (on a GPU)
    raises the tokens with them instead of leaving a fixed cap to split every pass."""

    def __init__(
        self, model: BaseModel, max_rows_per_forward: int = 64, max_tokens_per_forward: int | None = None
    ) -> None:
        check_trainable(model.token_embeddings.dtype)
        self.model = model
        self.max_rows = max_rows_per_forward
        self.max_tokens = max_tokens_per_forward or self.TOKENS_PER_ROW * max_rows_per_forward
        self.stacks = FitStacks()
        self.forwards = 0
        """Training forward passes through the base so far (a step takes one per chunk of rows)."""
        self.rows_forwarded = 0
        """Training rows in those passes: rows per forward, what a pool reports as its packing."""

    def train_step(self, fits: Sequence[FitState]) -> dict[str, float]:
        """One optimizer step for every running fit; returns each fit's training loss.

        Fits join their stack the first time they train here. No tensor op and no device sync per
        fit: per-fit work on the host is bookkeeping (its rows, its step count, its loss).
        """
        active = [f for f in fits if f.status == "running" and f.step < f.config.steps]
        if not active:
            return {}
        self.stacks.join(active)
        rows: list[tuple[int, FitState, Example]] = [
            (i, f, ex) for i, f in enumerate(active) for ex in f.next_batch()
        ]
        device = self.model.device
        # Every index and id list of the step is staged on the host first and reaches the device in one
        # copy (pinned, non-blocking on CUDA): no transfer, and so no stream sync, per chunk or per fit.
        staging = Staging(device)
        owners = staging.add([i for i, _, _ in rows])
        batch_sizes = staging.add([f.config.batch_size for f in active])
        stack_slots: dict[FitStack, list[int]] = {}
        for fit in active:
            stack, slot = fit.slot  # type: ignore[misc]
            stack_slots.setdefault(stack, []).append(slot)
        staged_slots = {stack: staging.add(slots) for stack, slots in stack_slots.items()}
        lengths = [f.adapter.spec.n_tokens + len(ex.input_ids) + len(ex.target_ids) for _, f, ex in rows]
        chunks = []
        for indices in plan_chunks(lengths, self.max_rows, self.max_tokens):
            # rows of one stack side by side: each stack builds its prompts in one batched op
            indices.sort(key=lambda r: id(rows[r][1].slot[0]))  # type: ignore[index]
            chunk = [rows[r] for r in indices]
            self.forwards, self.rows_forwarded = self.forwards + 1, self.rows_forwarded + len(chunk)
            forcing = self.model.stage_targets(
                [f.adapter.spec.n_tokens for _, f, _ in chunk],
                [ex.input_ids for _, _, ex in chunk],
                [ex.target_ids for _, _, ex in chunk],
                staging,
            )
            chunks.append(
                (staging.add(indices), self.stacks.stage_prompts([f for _, f, _ in chunk], staging), forcing)
            )
        fit_loss = torch.zeros(len(active), dtype=torch.float32, device=device)  # summed on the device
        # each row's fit and weight (1 / its fit's batch size), picked per chunk on the device
        row_owner = staging[owners]
        row_weight = staging[batch_sizes].to(torch.float32).reciprocal()[row_owner]
        for picked, prompts, forcing in chunks:
            logp, mask = self.model.staged_target_logprobs(self.stacks.row_prompts(prompts), forcing)
            row_loss = -logp.sum(1) / mask.sum(1)  # [R] float32, on the model's device
            owner, weights = row_owner[staging[picked]], row_weight[staging[picked]]
            # A non-finite row makes its fit's sum non-finite (the fit fails) and adds nothing to the graph.
            fit_loss.index_add_(0, owner, row_loss.detach() * weights)
            finite = torch.isfinite(row_loss.detach())
            total = (torch.where(finite, row_loss, torch.zeros_like(row_loss)) * weights).sum()
            if total.requires_grad:
                total.backward()
        losses = fit_loss.tolist()  # the step's one device sync, not one per fit, row or chunk
        stepped: dict[FitStack, list[int]] = {stack: [] for stack in stack_slots}
        for fit, loss in zip(active, losses):
            stack, slot = fit.slot  # type: ignore[misc]
            if not math.isfinite(loss):
                fit.fail(f"training loss became non-finite at step {fit.step + 1}")
                continue
            stepped[stack].append(slot)
            fit.step += 1
            fit.train_losses.append(loss)
        for stack, slots in stepped.items():
            # the staged slots unless a fit failed (rare): then a copy of the ones still training
            index = (
                staging[staged_slots[stack]] if slots == stack_slots[stack] else host_to_device(slots, device)
            )
            stack.step(index)  # also clears the stack's gradient, failed fits' rows included
        return {fit.key: loss for fit, loss in zip(active, losses)}

    def evaluate(self, fits: Sequence[FitState]) -> dict[str, dict[str, float]]:
        """{fit key: held-out metrics} of every fit, batched across fits.

        A fit evaluated for the first time also gets its zero-shot metrics (the base model alone on
        the same rows) in the same batches, once per group: a sweep's candidates share their rows.
        """
        items = [EvalItem(f.key, f.adapter, f.held_out, f.labels) for f in fits]
        baseline = {f.group: f for f in fits if f.zero_shot is None}
        items += [EvalItem(ZERO_SHOT + g, None, f.held_out, f.labels) for g, f in baseline.items()]
        spread = [ZERO_SHOT + g for g in baseline]
        results = evaluate(self.model, items, self.max_rows, self.max_tokens, spread=spread)
        for fit in fits:
            if fit.zero_shot is None:
                fit.zero_shot = results[ZERO_SHOT + fit.group]
        return {f.key: results[f.key] for f in fits}

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
