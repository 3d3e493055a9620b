"""The batched decode loop behind `BaseModel.iter_generate`: one KV cache for the batch, rows that stop
leave its tensors, and each step's only host read is the chosen tokens (the next step is fed from
the device)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ulpt.models.output import OutputText
from ulpt.models.sampling import RowSampler, SamplingParams
from ulpt.models.transfer import host_to_device

if TYPE_CHECKING:
    from ulpt.models.base import BaseModel, Row


@torch.no_grad()
def decode_rows(
    model: BaseModel,
    rows: Sequence[Row],
    params: Sequence[SamplingParams],
    abandoned: Callable[[], Collection[int]] | None = None,
    outputs: Sequence[OutputText] | None = None,
) -> Iterator[dict[int, int]]:
    """`BaseModel.iter_generate` (its docstring says what the arguments mean)."""
    if len(rows) != len(params):
        raise ValueError("one SamplingParams per row")
    if not rows:
        return
    sampler = RowSampler(list(params))
    input_ids = [model._input_ids(row_input) for _, row_input in rows]
    empty = [i for i, ((p, _), ids) in enumerate(zip(rows, input_ids)) if p is None and not ids]
    if empty:
        raise ValueError(f"row {empty[0]} has no input tokens (no prompt and an empty text)")
    filled_here = outputs is None
    texts = outputs if outputs is not None else [model.output_text(p) for p in params]
    state = model.prefill([p for p, _ in rows], input_ids)
    logits = state.logits[:, -1]
    running = [p.max_new_tokens > 0 for p in params]
    generated = [0] * len(rows)
    live = list(range(len(rows)))  # the rows still in the tensors (their index in `rows`), in order
    while any(running):
        chosen = sampler.choose(logits)  # [len(live)] on the device
        tokens: list[int] = chosen.tolist()  # the step's one device sync
        emitted: dict[int, int] = {}
        for i, token in zip(live, tokens):
            generated[i] += 1
            emitted[i] = token
            ends = token in model.eos_ids and not params[i].ignore_eos
            if ends or generated[i] >= params[i].max_new_tokens:
                running[i] = False
            elif params[i].stop and filled_here:
                texts[i].add(token)
        yield emitted  # a caller's `outputs` take the tokens here
        for i in emitted:
            running[i] = running[i] and not texts[i].stopped
        for i in abandoned() if abandoned is not None else ():
            running[i] = False
        if not any(running):
            break
        keep = [k for k, i in enumerate(live) if running[i]]
        if len(keep) < len(live):
            # Stopped rows leave the batch: later steps cost only the rows still decoding.
            live, tokens = [live[k] for k in keep], [tokens[k] for k in keep]
            sampler = sampler.select(keep)
            index = host_to_device(keep, model.device)
            state.select(index)
            chosen = chosen.index_select(0, index)
        logits = model.step(state, chosen[:, None])[:, -1]  # fed from the device, not copied back
