"""Stacked fits: the parameters of same-shaped fits as rows of one tensor, stepped together.

A `FitStack` holds every fit of one method and shape: row i of `flat` [capacity, P] is all of fit
i's parameters (each name a slice of the row), with its AdamW moments, step count and
hyperparameters in the same row of their own tensors. Prompts of many fits come out of one batched
`materialize`, and one vectorized AdamW (`ulpt.training.optim`) updates every fit at once.

While a fit is stacked, its adapter's parameters are views of its row, so `fit.adapter` is always
current (evaluation, best checkpoints, `state_dict`). When the fit ends it leaves: its parameters
get storage of their own and the row is free for the next fit to join.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ulpt.adapters import Adapter
from ulpt.models.batch import RowPrompts
from ulpt.models.transfer import Staged, Staging
from ulpt.training import optim

if TYPE_CHECKING:
    from ulpt.training.packed import FitState


def stack_key(adapter: Adapter) -> tuple[Any, ...]:
    """Fits with equal keys can share a stack: same method, parameter and frozen shapes, device."""
    params = tuple((name, tuple(p.shape)) for name, p in adapter.params.items())
    frozen = tuple((name, tuple(t.shape)) for name, t in adapter.frozen.items())
    return adapter.spec.method, params, frozen, str(adapter.params[params[0][0]].device)


class FitStack:
    """Fits of one method and shape; see the module docstring."""

    STATE = ("flat", "exp_avg", "exp_avg_sq", "steps", "lr", "warmup", "total", "weight_decay", "max_norm")
    """The per-fit rows, everything but the frozen tensors."""

    def __init__(self, template: Adapter, owner: FitStacks) -> None:
        self.owner = owner  # the trainer's stacks: a fit stacked elsewhere moves when it trains here
        self.spec = template.spec  # materialize only reads the method
        self.shapes = {name: tuple(p.shape) for name, p in template.params.items()}
        self.sizes = {name: math.prod(shape) for name, shape in self.shapes.items()}
        self.frozen_shapes = {name: tuple(t.shape) for name, t in template.frozen.items()}
        self.device = next(iter(template.params.values())).device
        self.members: list[FitState | None] = []  # slot -> fit, None where free
        self._allocate(0)

    def _allocate(self, capacity: int) -> None:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(capacity, *shape, dtype=torch.float32, device=self.device)

        width = sum(self.sizes.values())
        self.flat = zeros(width).requires_grad_()  # [C, P] the leaf every prompt is built from
        self.exp_avg, self.exp_avg_sq = zeros(width), zeros(width)  # [C, P]
        self.steps = zeros()  # [C] optimizer steps taken, for bias correction and the schedule
        self.lr, self.warmup, self.total = zeros(), zeros(), zeros()  # [C]
        self.weight_decay, self.max_norm = zeros(), zeros()  # [C]; max_norm inf = no clipping
        self.frozen = {name: zeros(*shape) for name, shape in self.frozen_shapes.items()}

    @property
    def capacity(self) -> int:
        return len(self.members)

    def _grow(self, capacity: int) -> None:
        """Reallocate with room for `capacity` fits, keeping every member's row where it is."""
        kept = self.capacity
        old = {name: getattr(self, name) for name in self.STATE}
        old_frozen = self.frozen
        self._allocate(capacity)
        with torch.no_grad():
            for name, tensor in old.items():
                getattr(self, name)[:kept] = tensor
            for name, tensor in old_frozen.items():
                self.frozen[name][:kept] = tensor
        self.members += [None] * (capacity - kept)
        for slot, fit in enumerate(self.members):
            if fit is not None:
                self._bind(fit, slot)

    def _bind(self, fit: FitState, slot: int) -> None:
        """Make the fit's adapter parameters views of its row (no copy: they follow every update)."""
        offset = 0
        for name, shape in self.shapes.items():
            param = fit.adapter.params[name]
            param.data = self.flat.data[slot, offset : offset + self.sizes[name]].view(shape)
            param.grad = None
            offset += self.sizes[name]

    def join(self, fits: Sequence[FitState]) -> None:
        """Give each fit a free row, seeded with its parameters, fresh AdamW moments and hyperparameters."""
        free = [slot for slot, member in enumerate(self.members) if member is None]
        if len(free) < len(fits):
            self._grow(max(2 * self.capacity, self.capacity + len(fits) - len(free), 8))
            free = [slot for slot, member in enumerate(self.members) if member is None]
        slots = free[: len(fits)]
        index = torch.tensor(slots, dtype=torch.long, device=self.device)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device)

        with torch.no_grad():
            rows = [
                torch.cat([fit.adapter.params[n].detach().reshape(-1) for n in self.shapes]) for fit in fits
            ]
            self.flat.index_copy_(0, index, torch.stack(rows).to(self.device))
            for state in (self.exp_avg, self.exp_avg_sq):
                state.index_fill_(0, index, 0.0)
            self.steps.index_copy_(0, index, column([fit.step for fit in fits]))  # the schedule goes on
            configs = [fit.config for fit in fits]
            self.lr.index_copy_(0, index, column([c.peak_lr for c in configs]))
            self.warmup.index_copy_(0, index, column([c.warmup for c in configs]))
            self.total.index_copy_(0, index, column([c.steps for c in configs]))
            self.weight_decay.index_copy_(0, index, column([c.weight_decay for c in configs]))
            norms = [math.inf if c.max_grad_norm is None else c.max_grad_norm for c in configs]
            self.max_norm.index_copy_(0, index, column(norms))
            for name, tensor in self.frozen.items():
                frozen = torch.stack([fit.adapter.frozen[name] for fit in fits]).to(self.device)
                tensor.index_copy_(0, index, frozen)
        for fit, slot in zip(fits, slots):
            self.members[slot] = fit
            fit.slot = (self, slot)
            self._bind(fit, slot)

    def leave(self, fit: FitState) -> None:
        """The fit's parameters get their own storage (its final values) and its row is freed."""
        _, slot = fit.slot or (None, -1)
        assert self.members[slot] is fit, "a fit leaves the stack it is in"
        for param in fit.adapter.params.values():
            param.data = param.data.clone()
        self.members[slot] = None
        fit.slot = None

    def prompts(self, index: torch.Tensor) -> torch.Tensor:
        """[R, n, d] float32 prompts of the fits in slots `index` (a long tensor on the stack's device),
        in one batched op, differentiable into `flat`."""
        rows = self.flat.index_select(0, index)  # [R, P]
        params, offset = {}, 0
        for name, shape in self.shapes.items():
            params[name] = rows[:, offset : offset + self.sizes[name]].unflatten(1, shape)
            offset += self.sizes[name]
        frozen = {name: tensor.index_select(0, index) for name, tensor in self.frozen.items()}
        return self.spec.adapter_method.materialize(params, frozen)

    @torch.no_grad()
    def step(self, index: torch.Tensor) -> None:
        """One clipped AdamW step of the fits in slots `index` (a long tensor on the stack's device), each
        on its own schedule; other rows untouched."""
        grad = self.flat.grad
        self.flat.grad = None
        if not index.numel() or grad is None:
            return
        grad = grad.index_select(0, index)
        grad.mul_(optim.clip_coefficients(grad, self.max_norm.index_select(0, index))[:, None])
        done = self.steps.index_select(0, index)
        lr = self.lr.index_select(0, index) * optim.lr_factor(
            done, self.warmup.index_select(0, index), self.total.index_select(0, index)
        )
        param, exp_avg, exp_avg_sq = (
            t.index_select(0, index) for t in (self.flat, self.exp_avg, self.exp_avg_sq)
        )
        optim.adamw_(param, grad, exp_avg, exp_avg_sq, done + 1, lr, self.weight_decay.index_select(0, index))
        self.flat.index_copy_(0, index, param)
        self.exp_avg.index_copy_(0, index, exp_avg)
        self.exp_avg_sq.index_copy_(0, index, exp_avg_sq)
        self.steps.index_copy_(0, index, done + 1)

    def optimizer_state(self, slot: int) -> dict[str, Any]:
        """One fit's AdamW state as detached copies: {"step", "exp_avg": {name: t}, "exp_avg_sq": {...}}."""
        state: dict[str, Any] = {"step": int(self.steps[slot].item())}
        for key, tensor in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            parts = tensor[slot].detach().clone().split(list(self.sizes.values()))
            state[key] = {name: part.view(self.shapes[name]) for name, part in zip(self.shapes, parts)}
        return state

    @torch.no_grad()
    def load_optimizer_state(self, slot: int, state: dict[str, Any]) -> None:
        """Put back what `optimizer_state` returned (a fit moving between trainers keeps its moments)."""
        self.steps[slot] = float(state["step"])
        for key, tensor in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            tensor[slot] = torch.cat([state[key][name].reshape(-1).to(tensor) for name in self.shapes])


class FitStacks:
    """The stacks of one trainer, one per stack key; fits join the first time they train here."""

    def __init__(self) -> None:
        self.stacks: dict[tuple[Any, ...], FitStack] = {}

    def join(self, fits: Sequence[FitState]) -> None:
        """Stack every fit not yet stacked here (a fit stacked by another trainer moves over, and a fit
        resumed from a checkpoint takes its saved AdamW moments)."""
        newcomers: dict[tuple[Any, ...], list[FitState]] = {}
        moved: dict[int, dict[str, Any]] = {}
        for fit in fits:
            if fit.slot is not None:
                if fit.slot[0].owner is self:
                    continue
                moved[id(fit)] = fit.slot[0].optimizer_state(fit.slot[1])
                fit.slot[0].leave(fit)
            newcomers.setdefault(stack_key(fit.adapter), []).append(fit)
        for key, group in newcomers.items():
            if key not in self.stacks:
                self.stacks[key] = FitStack(group[0].adapter, self)
            stack = self.stacks[key]
            stack.join(group)
            for fit in group:
                saved = moved.get(id(fit), fit.resumed_optimizer)
                fit.resumed_optimizer = None
                if saved is not None and fit.slot is not None:
                    stack.load_optimizer_state(fit.slot[1], saved)

    def stage_prompts(self, fits: Sequence[FitState], staging: Staging) -> StagedPrompts:
        """Which stacked prompt each row takes (one entry per row, fits of one stack adjacent), staged
        for the step's one copy to the device."""
        runs: list[tuple[FitStack, list[int]]] = []
        for fit in fits:
            stack, slot = fit.slot  # type: ignore[misc]
            if runs and runs[-1][0] is stack:
                runs[-1][1].append(slot)
            else:
                runs.append((stack, [slot]))
        staged = []
        for stack, slots in runs:  # each fit's prompt built once, however many of its rows the chunk holds
            unique = list(dict.fromkeys(slots))
            position = {slot: i for i, slot in enumerate(unique)}
            repeats = staging.add([position[s] for s in slots]) if len(unique) < len(slots) else None
            staged.append((stack, staging.add(unique), repeats))
        return StagedPrompts(staging, staged, [f.adapter.spec.n_tokens for f in fits])

    def row_prompts(self, staged: StagedPrompts) -> RowPrompts:
        """The prompts of a chunk's rows, from `stage_prompts`: one batched op per stack."""
        parts = []
        for stack, unique, repeats in staged.runs:
            prompts = stack.prompts(staged.staging[unique])  # [U, n, d]
            if repeats is not None:
                prompts = prompts.index_select(0, staged.staging[repeats])  # [R_s, n, d]
            parts.append(prompts.flatten(0, 1))  # [R_s * n, d]
        return RowPrompts(torch.cat(parts) if len(parts) > 1 else parts[0], staged.lengths)


@dataclass
class StagedPrompts:
    """A chunk's prompt plan: per run of rows of one stack, its distinct slots and, when a fit has
    several rows, each row's place among them (both staged); and every row's prompt length."""

    staging: Staging
    runs: list[tuple[FitStack, Staged, Staged | None]]
    lengths: list[int]
