"""Mid-fit checkpoints: everything a fit needs to go on exactly where it was, many fits in one blob.

A checkpoint holds, per fit (every candidate of a sweep): its trainable parameters, its AdamW
moments, its step (the schedule position), its data cursor (rows drawn so far: with the fit's seed
this fixes every row it sees next, `FitState.seek`), its best-so-far parameters and metrics, its
curve and evaluation history, and its zero-shot baseline. Restored into a freshly prepared fit, it
trains on to the same result as a fit never interrupted (a test holds it to 1e-5 in float32).

The format is one safetensors file: the tensors, and the rest as JSON in its metadata. Nothing is
unpickled; a blob that does not describe the fits it is restored into is refused with one line.
The bytes depend only on the fits' states, so a checkpoint is content-addressed like any blob.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ulpt.adapters.limits import read_header
from ulpt.errors import UlptError
from ulpt.models.transfer import to_host
from ulpt.training.packed import FitState
from ulpt.training.stack import FitStack

FORMAT = "ulpt-fit-checkpoint"
VERSION = "1"
METADATA_KEY = "ulpt_checkpoint"
"""The one safetensors metadata entry: the fits' states as JSON."""


class CheckpointError(UlptError):
    """A checkpoint that cannot be restored into the fits it was asked for."""


@dataclass(frozen=True)
class SavedFit:
    """One fit (or sweep candidate) as a checkpoint holds it."""

    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    """params.<name>, best.<name>, and for a fit that had stepped exp_avg.<name>, exp_avg_sq.<name>."""


def encode(groups: Mapping[str, Sequence[FitState]]) -> bytes:
    """One blob for many fits: {fit key: its FitStates (one, or a sweep's candidates)}.

    Fits of one parameter layout (method and shapes) share one [fits, P] tensor per part (parameters,
    best parameters, the two AdamW moments), so a pack of thousands of fits is a handful of tensors,
    and a stacked fit's rows are copied off its device with the whole stack, never one by one.
    """
    layouts: dict[tuple[Any, ...], dict[str, list[torch.Tensor]]] = {}
    stacks: dict[FitStack, dict[str, torch.Tensor]] = {}
    index: dict[str, list[dict[str, Any]]] = {}
    for group, fits in groups.items():
        index[group] = []
        for fit in fits:
            layout = tuple((name, tuple(p.shape)) for name, p in fit.adapter.params.items())
            rows = layouts.setdefault(layout, {part: [] for part in PARTS})
            entry = {"key": fit.key, "layout": list(layouts).index(layout), "row": len(rows["params"])}
            for part, row in _fit_rows(fit, stacks).items():
                rows[part].append(row)
            index[group].append({**entry, "moments": fit.slot is not None, **_fit_state(fit)})
    tensors = {  # stacked on the fits' device, then one copy to the host per part and layout
        f"{i}.{part}": to_host(torch.stack(rows[part]).to(torch.float32)).contiguous()
        for i, rows in enumerate(layouts.values())
        for part in PARTS
    }
    header = {"format": FORMAT, "version": VERSION, "layouts": list(layouts), "fits": index}
    return save_tensors(tensors, {METADATA_KEY: json.dumps(header, sort_keys=True)})  # one key: stable bytes


def decode(data: bytes) -> dict[str, list[SavedFit]]:
    """{fit key: [SavedFit per candidate]} from `encode`'s bytes; refuses anything else."""
    try:
        metadata = read_header(data)[1].get("__metadata__") or {}
        header = json.loads(metadata[METADATA_KEY])
        if (header.get("format"), header.get("version")) != (FORMAT, VERSION):
            raise CheckpointError(f"not a version {VERSION} fit checkpoint: {header.get('format')!r}")
        tensors = load_tensors(data)
        out: dict[str, list[SavedFit]] = {}
        for group, entries in header["fits"].items():
            out[group] = [_saved_fit(entry, header["layouts"], tensors) for entry in entries]
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"not a fit checkpoint: {type(exc).__name__} {exc}") from None
    return out


def _saved_fit(entry: dict[str, Any], layouts: list[Any], tensors: Mapping[str, torch.Tensor]) -> SavedFit:
    layout = layouts[entry["layout"]]
    sizes = [math.prod(shape) for _, shape in layout]
    out = {}
    for part in PARTS if entry["moments"] else PARTS[:2]:
        row = tensors[f"{entry['layout']}.{part}"][entry["row"]]
        out.update({f"{part}.{name}": t.view(shape) for (name, shape), t in zip(layout, row.split(sizes))})
    return SavedFit(state=entry, tensors=out)


def restore(fits: Sequence[FitState], saved: Sequence[SavedFit]) -> None:
    """Put a checkpoint's states into freshly prepared fits (one fit, or a sweep's candidates).

    The fits must not have trained yet (not stacked): their parameters are overwritten in place.
    """
    if [f.key for f in fits] != [s.state["key"] for s in saved]:
        raise CheckpointError(
            f"checkpoint holds {[s.state['key'] for s in saved]}, the fit trains {[f.key for f in fits]}"
        )
    checked = []  # every candidate checked before any is changed: all restored, or none
    for fit, entry in zip(fits, saved):
        if fit.slot is not None:
            raise CheckpointError(f"fit {fit.key} is already training: restore before its first step")
        moments = (
            ("exp_avg", "exp_avg_sq") if "exp_avg." + next(iter(fit.adapter.params)) in entry.tensors else ()
        )
        checked.append(
            {part: _named(entry.tensors, part + ".", fit) for part in ("params", "best", *moments)}
        )
    for fit, entry, tensors in zip(fits, saved, checked):
        state = entry.state
        device = next(iter(fit.adapter.params.values())).device
        with torch.no_grad():
            for name, param in fit.adapter.params.items():
                param.copy_(tensors["params"][name].to(device))
        fit.restore_best({f"params.{n}": t.to(device) for n, t in tensors["best"].items()})
        fit.step = int(state["step"])
        fit.seek(int(state["cursor"]))
        fit.status, fit.error = state["status"], state["error"]
        fit.best, fit.evals_without_gain = state["best"], int(state["evals_without_gain"])
        fit.history, fit.train_losses = list(state["history"]), list(state["train_losses"])
        fit.zero_shot = state["zero_shot"]
        if fit.status == "running" and "exp_avg" in tensors:
            fit.resumed_optimizer = {
                "step": fit.step,
                "exp_avg": tensors["exp_avg"],
                "exp_avg_sq": tensors["exp_avg_sq"],
            }
        elif fit.status != "running":
            fit.finished = fit.started


def _fit_state(fit: FitState) -> dict[str, Any]:
    return {
        "status": fit.status,
        "error": fit.error,
        "step": fit.step,
        "cursor": fit.cursor,
        "best": fit.best,
        "evals_without_gain": fit.evals_without_gain,
        "history": fit.history,
        "train_losses": fit.train_losses,
        "zero_shot": fit.zero_shot,
    }


def _fit_rows(fit: FitState, stacks: dict[FitStack, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A fit's parts as flat rows on its device (`encode` copies them to the host together); a stacked
    fit's are views of its rows of the stack's tensors. An unstacked fit has no moments (zeros)."""
    best = torch.cat([t.detach().reshape(-1) for t in fit.best_params.values()])
    if fit.slot is None:
        params = torch.cat([p.detach().reshape(-1) for p in fit.adapter.params.values()])
        return {
            "params": params,
            "best": best.to(params.device),
            "exp_avg": torch.zeros_like(params),
            "exp_avg_sq": torch.zeros_like(params),
        }
    stack, slot = fit.slot
    if stack not in stacks:
        stacks[stack] = {part: getattr(stack, name).detach() for part, name in STACKED.items()}
    return {"best": best.to(stack.device), **{part: stacks[stack][part][slot] for part in STACKED}}


PARTS = ("params", "best", "exp_avg", "exp_avg_sq")
STACKED = {"params": "flat", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
"""Checkpoint part -> the FitStack tensor that holds it, one row per fit."""


def _named(tensors: Mapping[str, torch.Tensor], prefix: str, fit: FitState) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `prefix`, checked against the fit's parameter names and shapes."""
    out = {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}
    shapes = {name: tuple(p.shape) for name, p in fit.adapter.params.items()}
    if {name: tuple(t.shape) for name, t in out.items()} != shapes:
        raise CheckpointError(f"checkpoint of fit {fit.key}: its {prefix.rstrip('.')} tensors do not fit")
    return out
