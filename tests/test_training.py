"""Training: adapters learn, packed fits match fits trained alone, failures stay local."""

from __future__ import annotations

import random

import pytest
import torch

import ulpt
from ulpt.adapters.spec import METHODS
from ulpt.errors import DataError, SpecError
from ulpt.training import FitRequest, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit

POSITIVE = "good great love happy clean fast".split()
NEGATIVE = "bad awful hate sad dirty slow".split()


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append({"input": f"the {rng.choice(['movie', 'food', 'room'])} was {word}. A:", "target": label})
    return rows


def test_ulpt_r2_learns_a_label_task(tiny_models) -> None:
    model = tiny_models["llama"]
    train, evals = sentiment_rows(64, 1), sentiment_rows(48, 2)
    spec = ulpt.AdapterSpec(method="ulpt", n_tokens=8, rank=2, seed=1)
    adapter, metrics = ulpt.train_adapter(
        model, spec, train, evals, steps=150, lr=0.1, batch_size=8, eval_every=25, select_on="eval_loss"
    )
    assert metrics["eval_accuracy"] >= 0.85, metrics["eval_history"]  # chance is 0.5 on a random tiny model
    assert metrics["train_curve"][-1] < metrics["train_curve"][0] / 2
    assert adapter.num_trainable_params == 8 * 2 + 2 * model.hidden_size
    # The adapter taught the output format: greedy answers are labels, which the bare model never says.
    tuned = model.generate([(adapter, row["input"]) for row in evals], max_new_tokens=2)
    bare = model.generate([(None, row["input"]) for row in evals], max_new_tokens=2)
    is_label = [text.strip().startswith(("positive", "negative")) for text in tuned + bare]
    assert sum(is_label[: len(evals)]) >= 0.9 * len(evals), tuned
    assert sum(is_label[len(evals) :]) == 0, bare


@pytest.mark.parametrize("method", METHODS)
def test_packed_fit_follows_the_same_curve_as_alone(tiny_model: ulpt.BaseModel, method: str) -> None:
    config = TrainConfig(steps=12, lr=0.05, batch_size=4, eval_every=6, seed=3)
    target = FitRequest(
        "target",
        ulpt.AdapterSpec(method=method, n_tokens=3, rank=2, seed=9),
        sentiment_rows(20, 5),
        sentiment_rows(8, 6),
        config,
    )
    others = [
        FitRequest(
            f"other{i}",
            ulpt.AdapterSpec(method=m, n_tokens=n, rank=2, seed=i),
            sentiment_rows(16, 10 + i),
            (),
            TrainConfig(steps=s, lr=0.01, batch_size=b),
        )
        for i, (m, n, s, b) in enumerate([("ulpt", 7, 12, 2), ("pt", 2, 5, 3), ("lopt2", 5, 20, 4)])
    ]
    alone = ulpt.train_adapters(tiny_model, [target])["target"]
    packed = ulpt.train_adapters(tiny_model, [others[0], target, *others[1:]], max_rows_per_forward=7)[
        "target"
    ]
    assert alone[1]["steps"] == packed[1]["steps"] == 12
    torch.testing.assert_close(
        torch.tensor(packed[1]["train_curve"]), torch.tensor(alone[1]["train_curve"]), atol=1e-3, rtol=1e-3
    )
    torch.testing.assert_close(
        packed[0].prompt_embeddings(), alone[0].prompt_embeddings(), atol=1e-3, rtol=1e-3
    )


def test_a_diverging_fit_fails_alone(tiny_models) -> None:
    model = tiny_models["llama"]
    config = TrainConfig(steps=5, batch_size=2)
    fits = [
        prepare_fit(model, FitRequest(k, ulpt.AdapterSpec(seed=i), sentiment_rows(8, i), (), config))
        for i, k in enumerate(["good", "bad"])
    ]
    with torch.no_grad():
        fits[1].adapter.params["ulpt_z"].fill_(float("inf"))
    PackedTrainer(model).run(fits)
    assert fits[0].status == "done" and fits[0].step == 5
    assert fits[1].status == "failed" and "non-finite" in (fits[1].error or "")


def test_eval_rows_are_optional(tiny_models) -> None:
    """`FitRequest(..., eval_rows=None)` trains like `()`: no held-out metrics, the same adapter."""
    model = tiny_models["llama"]
    config = TrainConfig(steps=3, batch_size=2)
    rows = sentiment_rows(8, 5)
    trained = [
        ulpt.train_adapters(model, [FitRequest("fit", ulpt.AdapterSpec(seed=3), rows, evals, config)])["fit"]
        for evals in (None, ())
    ]
    (none, none_metrics), (empty, empty_metrics) = trained
    assert none is not None and empty is not None, (none_metrics, empty_metrics)
    assert none_metrics["steps"] == 3 and "eval_loss" not in none_metrics
    torch.testing.assert_close(none.prompt_embeddings(), empty.prompt_embeddings())


def test_early_stopping_and_best_checkpoint(tiny_models) -> None:
    model = tiny_models["llama"]
    request = FitRequest(
        "es",
        ulpt.AdapterSpec(seed=2),
        sentiment_rows(16, 3),
        sentiment_rows(8, 4),
        TrainConfig(steps=400, lr=5.0, eval_every=2, early_stopping_patience=2, select_on="eval_loss"),
    )
    fit = prepare_fit(model, request)
    PackedTrainer(model).run([fit])
    assert fit.status == "done" and fit.step < 400
    best = min(h["eval_loss"] for h in fit.history)
    assert fit.best is not None and fit.best["eval_loss"] == best
    final = PackedTrainer(model).evaluate([fit])["es"]["eval_loss"]
    assert final == pytest.approx(best, rel=1e-4)


def test_bad_training_input_is_refused_with_a_clear_message(tiny_models) -> None:
    model = tiny_models["llama"]
    spec = ulpt.AdapterSpec()
    with pytest.raises(DataError, match="string 'input' and 'target'"):
        ulpt.train_adapter(model, spec, [{"text": "x"}])
    with pytest.raises(ulpt.UlptError, match="no training rows"):
        ulpt.train_adapter(model, spec, [])
    with pytest.raises(DataError, match="more than the model's"):
        ulpt.train_adapter(model, spec, [{"input": "good " * 600, "target": "x"}])
    with pytest.raises(SpecError, match="^learning_rate is not a known field; known: batch_size, "):
        ulpt.train_adapter(model, spec, sentiment_rows(4, 1), learning_rate=0.1)
    with pytest.raises(SpecError, match="rank must be below"):
        ulpt.train_adapter(model, ulpt.AdapterSpec(rank=model.hidden_size), sentiment_rows(4, 1))
