"""Rows of one batch are independent: a row nobody reads leaves at the next step, and a row that cannot
be decoded fails alone while its batch mates produce exactly what they produce without it."""

from __future__ import annotations

import pytest
import torch

import ulpt
from tests.serve_fixtures import make_adapter
from ulpt_serving import BatchItem, Engine, ServeConfig
from ulpt_serving.engine import RowFailure

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["the movie was good. A:", "one plus two equals", "the staff was", "review: clean room"]


def _rows(model: ulpt.BaseModel, engine: Engine, max_new_tokens: int) -> list[BatchItem]:
    """Four rows of distinct adapters; EOS can end a row early, so tests use rows that reach the limit."""
    params = ulpt.SamplingParams(max_new_tokens=max_new_tokens)
    items = []
    for i, text in enumerate(TEXTS):
        compact = engine.cache.get_sync(f"a{i}", lambda i=i: make_adapter(model.hidden_size, i, "tiny"))
        items.append(BatchItem(text, params, f"a{i}", compact))
    return items


def _decode(engine: Engine, items: list[BatchItem], abandon_after: dict[int, int]) -> list[list[object]]:
    """Each row's outputs; row r is abandoned (as a disconnecting reader does) once it has k tokens."""
    out: list[list[object]] = [[] for _ in items]
    for step in engine.steps(items):
        for i, token in step.items():
            out[i].append(token)
            if abandon_after.get(i) == len(out[i]):
                items[i].control.abandon()
    return out


def test_an_abandoned_row_stops_at_the_next_step_and_its_batch_mates_are_unchanged(
    tiny_model: ulpt.BaseModel,
) -> None:
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    limit = 24
    alone = [engine.generate([item])[0].token_ids for item in _rows(tiny_model, engine, limit)]
    full = [i for i, ids in enumerate(alone) if len(ids) == limit]
    assert full, "some row should decode to max_new_tokens"
    gone = full[0]
    rows_per_forward: list[int] = []

    def count_rows(_module: object, _args: object, kwargs: dict[str, torch.Tensor]) -> None:
        fed = kwargs.get("decoder_input_ids", kwargs.get("input_ids", kwargs.get("inputs_embeds")))
        rows_per_forward.append(int(fed.shape[0]))

    hook = tiny_model.hf.register_forward_pre_hook(count_rows, with_kwargs=True)
    try:
        out = _decode(engine, _rows(tiny_model, engine, limit), {gone: 2})
    finally:
        hook.remove()
    assert out[gone] == alone[gone][:2]  # not one token after the reader left
    assert [o for i, o in enumerate(out) if i != gone] == [a for i, a in enumerate(alone) if i != gone]
    # It left the tensors too: from the third token on, forward passes carry only the other rows.
    lengths = sorted((len(o) for o in out), reverse=True)
    assert rows_per_forward[-1] == sum(1 for n in lengths if n == lengths[0])
    assert 4 not in rows_per_forward[3:] and rows_per_forward[:2] == [4, 4]


def test_a_batch_whose_readers_all_left_ends_at_once(tiny_model: ulpt.BaseModel) -> None:
    """A disconnect storm: every row abandoned after one token ends the batch (and frees the replica)."""
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    items = _rows(tiny_model, engine, 200)
    steps = 0
    for step in engine.steps(items):
        steps += 1
        for i in step:
            items[i].control.abandon()
    assert steps == 1


def test_a_row_that_cannot_be_decoded_fails_alone(tiny_model: ulpt.BaseModel) -> None:
    """A bare base-model row with no input has nothing to continue from: it gets a RowFailure (once, and
    no tokens) while the adapter rows next to it decode exactly as they do without it."""
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    limit = 8
    alone = [engine.generate([item])[0].token_ids for item in _rows(tiny_model, engine, limit)]
    items = _rows(tiny_model, engine, limit)
    items.insert(1, BatchItem("", ulpt.SamplingParams(max_new_tokens=limit)))
    out = _decode(engine, items, {})
    assert len(out[1]) == 1 and isinstance(out[1][0], RowFailure)
    assert "no input tokens" in str(out[1][0].error)
    assert out[:1] + out[2:] == alone
    solo = list(engine.steps([BatchItem("", ulpt.SamplingParams(max_new_tokens=limit))]))
    assert len(solo) == 1 and isinstance(solo[0][0], RowFailure)  # alone, too: a failure, not a raise
