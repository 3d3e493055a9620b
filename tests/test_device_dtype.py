"""Training and evaluation keep every tensor on the model's device, checked without a GPU.

The model stays on the CPU while `torch.device("meta")` makes meta the DEFAULT device, so a tensor
built without `device=` (the classic "works on CPU, breaks on CUDA" mistake) lands on meta and the
first op that meets a model tensor raises, or a host copy into a device tensor fails. The real CPU
numbers still flow, so results are compared with a run outside the context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import ulpt
from tests.test_training import sentiment_rows
from ulpt.training import FitRequest, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit
from ulpt.training.packed import FitState


@contextlib.contextmanager
def default_device_elsewhere() -> Iterator[None]:
    """Tensors made without an explicit device go to meta, away from the (CPU) model."""
    with torch.device("meta"):
        yield


def _fits(model: ulpt.BaseModel) -> list[FitState]:
    methods = [("ulpt", 3, 2), ("pt", 2, 3), ("lopt2", 4, 2)]
    return [
        prepare_fit(
            model,
            FitRequest(
                f"fit{i}",
                ulpt.AdapterSpec(method=method, n_tokens=n, rank=2, seed=i),
                sentiment_rows(12, i),
                sentiment_rows(6, 20 + i),
                TrainConfig(steps=4, lr=0.05, batch_size=batch, seed=i),
            ),
        )
        for i, (method, n, batch) in enumerate(methods)
    ]


def test_packed_training_step_builds_its_tensors_on_the_models_device(tiny_model: ulpt.BaseModel) -> None:
    reference, checked = _fits(tiny_model), _fits(tiny_model)
    trainer = PackedTrainer(tiny_model, max_rows_per_forward=4)
    # The first step outside: AdamW keeps its step counter on the host by design (a default-device tensor).
    assert trainer.train_step(reference) == pytest.approx(trainer.train_step(checked), rel=1e-5)
    expected = trainer.train_step(reference)
    with default_device_elsewhere():
        got = trainer.train_step(checked)
    assert got == pytest.approx(expected, rel=1e-5)
    for a, b in zip(reference, checked):
        torch.testing.assert_close(a.adapter.prompt_embeddings(), b.adapter.prompt_embeddings())


def test_evaluation_and_scoring_build_their_tensors_on_the_models_device(tiny_model: ulpt.BaseModel) -> None:
    fits = _fits(tiny_model)
    trainer = PackedTrainer(tiny_model, max_rows_per_forward=5)
    rows = [(fit.adapter, text) for fit, text in zip(fits, ["the movie was", "one plus two", "yes"])]
    inputs = [tiny_model.encode(text) for _, text in rows]
    targets = [tiny_model.encode_target(text, "positive") for _, text in rows]
    continuations = [
        [t, tiny_model.encode_target(text, "no", eos=False)] for t, (_, text) in zip(targets, rows)
    ]
    prompts = [a for a, _ in rows]

    def scores() -> tuple[object, ...]:
        with torch.no_grad():
            return (
                tiny_model.target_logprobs(prompts, inputs, targets),
                tiny_model.continuation_logprobs(prompts, inputs, continuations),
                tiny_model.score(rows),
            )

    # evaluate: multiple-choice labels, and cached prefixes on the decoder-only model
    expected, expected_scores = trainer.evaluate(fits), scores()
    with default_device_elsewhere():
        got, got_scores = trainer.evaluate(fits), scores()
    assert got.keys() == expected.keys()
    for key, metrics in expected.items():
        assert got[key] == pytest.approx(metrics, rel=1e-5)
    torch.testing.assert_close(got_scores, expected_scores)
