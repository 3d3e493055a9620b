"""Method defaults, packed learning-rate sweeps and the learned-or-not verdict against zero-shot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ulpt
from tests.test_jobs_spec import job_dict, write_reviews
from tests.test_jobs_state import run_in_process
from tests.test_training import sentiment_rows
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.sdk import Client
from ulpt.training import FitRequest, TrainConfig, train_adapters
from ulpt.training.defaults import default_lr
from ulpt.training.evaluate import EvalItem, evaluate
from ulpt.training.examples import label_set, tokenize
from ulpt.training.verdict import accuracy_margin, learned, verdict_metrics
from ulpt_jobs.driver import create_job

RATES = [0.002, 0.05, 0.3]


@pytest.fixture()
def client(tmp_path: Path) -> Client:
    with Client(home=tmp_path / "home", tenant="acme") as client:
        yield client


@pytest.mark.parametrize(
    ("method", "rank", "preset", "expected"),
    [
        ("ulpt", 2, "measured", 0.3),
        ("ulpt", 16, "measured", 0.3),
        ("ulpt", 64, "measured", 0.1),
        ("pt", 2, "measured", 0.03),
        ("dpt", 8, "measured", 0.3),
        ("lopt1", 4, "measured", 0.3),
        ("lopt2", 4, "measured", 0.3),
        ("ulpt", 2, "paper", 1e-2),
        ("pt", 2, "paper", 1e-2),
    ],
)
def test_default_lr_per_method_and_rank_band(method: str, rank: int, preset: str, expected: float) -> None:
    assert default_lr(ulpt.AdapterSpec(method=method, n_tokens=4, rank=rank), preset) == expected


def test_a_fit_without_lr_records_the_rate_it_trained_with(tiny_models) -> None:
    model = tiny_models["llama"]
    spec = ulpt.AdapterSpec(method="pt", n_tokens=3, seed=1)
    rows = sentiment_rows(8, 1)
    requests = [
        FitRequest("measured", spec, rows, (), TrainConfig(steps=2, batch_size=2)),
        FitRequest("paper", spec, rows, (), TrainConfig(steps=2, batch_size=2, preset="paper")),
        FitRequest("explicit", spec, rows, (), TrainConfig(steps=2, batch_size=2, lr=0.07, preset="paper")),
    ]
    out = train_adapters(model, requests)
    assert {key: metrics["lr"] for key, (_, metrics) in out.items()} == {
        "measured": 0.03,
        "paper": 0.01,
        "explicit": 0.07,
    }


def sweep_request(key: str, data_seed: int, lr: float | list[float]) -> FitRequest:
    spec = ulpt.AdapterSpec(method="ulpt", n_tokens=3, rank=2, seed=data_seed)
    config = TrainConfig(steps=10, lr=lr, batch_size=4, eval_every=5, seed=2)
    return FitRequest(key, spec, sentiment_rows(24, data_seed), sentiment_rows(16, data_seed + 50), config)


def test_a_packed_sweep_keeps_one_adapter_per_fit_the_best_on_validation_and_equals_each_rate_alone(
    tiny_models,
) -> None:
    model = tiny_models["llama"]
    swept = train_adapters(model, [sweep_request("a", 1, RATES), sweep_request("b", 2, RATES)])
    assert sorted(swept) == ["a", "b"]  # one result per fit, not per candidate
    assert {metrics["lr"] for _, metrics in swept.values()} != {RATES[0]}  # not merely the first rate
    for key, seed in (("a", 1), ("b", 2)):
        adapter, metrics = swept[key]
        assert adapter is not None
        sweep = metrics["sweep"]
        assert [c["lr"] for c in sweep] == RATES
        best = max(sweep, key=lambda c: c["eval_accuracy"])  # the first of equal accuracies
        assert metrics["lr"] == best["lr"]
        assert metrics["eval_accuracy"] == best["eval_accuracy"]
        for candidate in sweep:  # each candidate equals the same fit trained alone at its rate
            alone_adapter, alone = train_adapters(model, [sweep_request(key, seed, candidate["lr"])])[key]
            assert candidate["eval_loss"] == pytest.approx(alone["eval_loss"], abs=1e-3)
            assert candidate["eval_accuracy"] == alone["eval_accuracy"]
            if candidate["lr"] == metrics["lr"]:
                assert alone_adapter is not None
                for name, tensor in adapter.state_dict().items():
                    torch.testing.assert_close(tensor, alone_adapter.state_dict()[name], atol=1e-3, rtol=0)


def test_a_sweep_whose_rates_differ_picks_a_different_rate_than_the_worst(tiny_models) -> None:
    """Rates far apart give different validation losses: the sweep must not just keep the first."""
    model = tiny_models["llama"]
    request = sweep_request("a", 3, [1e-5, 0.3])
    request.config = request.config.model_copy(update={"select_on": "eval_loss"})
    _, metrics = train_adapters(model, [request])["a"]
    losses = {c["lr"]: c["eval_loss"] for c in metrics["sweep"]}
    assert losses[1e-5] != losses[0.3]
    assert metrics["lr"] == min(losses, key=losses.__getitem__)


def test_a_rank_and_length_sweep_registers_the_best_shape_and_equals_each_shape_alone(tiny_models) -> None:
    """Candidates of other shapes pack with the rest; the winner is an adapter of its own shape."""
    model = tiny_models["llama"]
    request = sweep_request("a", 5, 0.1)
    request.config = request.config.model_copy(update={"rank": [2, 6], "n_tokens": [3, 5]})
    adapter, metrics = train_adapters(model, [request])["a"]
    assert adapter is not None
    shapes = [(c["rank"], c["n_tokens"]) for c in metrics["sweep"]]
    assert shapes == [(2, 3), (2, 5), (6, 3), (6, 5)]
    best = max(metrics["sweep"], key=lambda c: c["eval_accuracy"])
    assert (adapter.spec.rank, adapter.spec.n_tokens) == (best["rank"], best["n_tokens"])
    assert adapter.state_dict()["params.ulpt_z"].shape == (best["n_tokens"], best["rank"])
    for candidate in metrics["sweep"]:
        alone = sweep_request("a", 5, 0.1)
        shape = {"rank": candidate["rank"], "n_tokens": candidate["n_tokens"]}
        alone.spec = alone.spec.model_copy(update=shape)
        _, alone_metrics = train_adapters(model, [alone])["a"]
        assert candidate["eval_loss"] == pytest.approx(alone_metrics["eval_loss"], abs=1e-3)


def test_a_rank_sweep_of_a_method_without_rank_trains_one_candidate(tiny_models) -> None:
    request = sweep_request("a", 6, 0.1)
    request.spec = request.spec.model_copy(update={"method": "pt"})
    request.config = request.config.model_copy(update={"rank": [2, 4, 8]})
    adapter, metrics = train_adapters(tiny_models["llama"], [request])["a"]
    assert adapter is not None and "sweep" not in metrics  # no copies of one candidate


def test_sweeps_are_bounded_and_swept_ranks_are_checked_at_submission(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from ulpt.errors import SpecError
    from ulpt_jobs.plan import make_plan

    with pytest.raises(SpecError, match="4 x 4 x 5 = 80 candidates"):
        TrainConfig(lr=[0.1, 0.2, 0.3, 0.4], rank=[1, 2, 3, 4], n_tokens=[1, 2, 3, 4, 5])
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, train={"rank": [2, 4096]}))
    with pytest.raises(SpecError, match=r"train\.rank must be below the model's hidden size .* swept rank"):
        make_plan(spec, tmp_path)


def test_every_fit_records_zero_shot_on_its_held_out_rows(tiny_models) -> None:
    model = tiny_models["llama"]
    request = sweep_request("a", 4, 0.1)
    _, metrics = train_adapters(model, [request])["a"]
    evals = tokenize(model, list(request.eval_rows or ()), 3)
    labels = label_set(list(request.train_rows) + list(request.eval_rows or ()))
    zero = evaluate(model, [EvalItem("z", None, evals, labels)])["z"]
    assert metrics["zero_shot_accuracy"] == zero["eval_accuracy"]
    assert metrics["zero_shot_loss"] == pytest.approx(zero["eval_loss"], abs=1e-5)
    assert metrics["learned"] in (0.0, 1.0)
    assert metrics["learned"] == float(learned(metrics, zero, len(evals)))


def test_accuracy_rule_needs_a_gain_beyond_the_binomial_interval() -> None:
    n = 100
    margin = accuracy_margin(0.5, n)  # 1.96 * sqrt(0.25 / 100) = 0.098
    assert margin == pytest.approx(0.098)
    assert learned({"eval_accuracy": 0.60}, {"eval_accuracy": 0.5}, n)  # +0.10 > 0.098
    assert not learned({"eval_accuracy": 0.59}, {"eval_accuracy": 0.5}, n)  # +0.09: noise
    assert not learned({"eval_accuracy": 0.4}, {"eval_accuracy": 0.5}, n)
    assert not learned({"eval_accuracy": 0.6}, {"eval_accuracy": 0.5}, 16)  # same gain, too few rows
    assert learned({"eval_accuracy": 0.01}, {"eval_accuracy": 0.0}, n)  # one more correct row
    assert not learned({"eval_accuracy": 1.0}, {"eval_accuracy": 1.0}, n)  # nothing beats perfect


def test_loss_rule_needs_a_drop_beyond_the_standard_error() -> None:
    zero = {"eval_loss": 2.0, "eval_loss_se": 0.1}
    assert learned({"eval_loss": 1.79}, zero, 50)  # 0.21 > 1.96 * 0.1
    assert not learned({"eval_loss": 1.81}, zero, 50)
    assert not learned({"eval_loss": 2.5}, zero, 50)


def test_verdict_metrics_are_numbers_the_catalog_can_filter() -> None:
    trained, zero = {"eval_accuracy": 0.9, "eval_loss": 0.3}, {"eval_accuracy": 0.5, "eval_loss": 1.0}
    out = verdict_metrics(trained, zero, 40)
    assert out == {"zero_shot_accuracy": 0.5, "zero_shot_loss": 1.0, "learned": 1.0}
    assert verdict_metrics(None, None, 0) == {}


def test_a_job_sweep_registers_one_adapter_per_fit_with_its_sweep_and_verdict(
    client: Client,
    tiny_models: dict[str, ulpt.BaseModel],
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=3)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, train={"lr": RATES}, fits_per_worker=4))
    job_id, _ = create_job(JobsAPI(client).target(), spec, "acme")
    run_in_process(client, job_id, tiny_models["llama"])
    fits = JobsAPI(client).get(job_id).fits()
    assert [(f.status, f.adapter) for f in fits] == [("done", f"user-{u}:1") for u in range(3)]
    adapters = list(client.adapters.find(job_id=job_id, limit=10))
    assert len(adapters) == 3  # the winners only
    for record in adapters:
        config = record.training_config or {}
        sweep = config["sweep"]
        assert [c["lr"] for c in sweep] == RATES
        assert config["lr"] == max(sweep, key=lambda c: c["eval_accuracy"])["lr"]
        assert record.metrics["lr"] == config["lr"] and record.metrics["learned"] in (0.0, 1.0)
    learned = list(client.adapters.find(job_id=job_id, metrics=["learned>=1"]))
    assert {a.id for a in learned} == {a.id for a in adapters if a.metrics["learned"] == 1.0}
    from ulpt.cli.jobs import print_job
    from ulpt_jobs.progress import learned_text

    status = JobsAPI(client).get(job_id).status()
    assert status.verdicts == {"evaluated": 3, "learned": len(learned)}
    assert learned_text(status) == f"{len(learned)} of 3 learned"  # the live progress bar's column
    print_job(status, fits)
    assert f"{len(learned)} of 3 evaluated fit(s) learned" in capsys.readouterr().out


def test_repeated_lr_flags_make_a_sweep_and_one_is_a_rate(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from ulpt.cli.train import build_spec

    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    flags = {"base_model": str(tiny_model_dirs["llama"]), "input_column": "text", "target_column": "label"}
    assert build_spec(None, {**flags, "lr": [0.1, 0.3]}, [str(data)], None).train.lr == [0.1, 0.3]
    assert build_spec(None, {**flags, "lr": [0.2]}, [str(data)], None).train.lr == 0.2
    assert build_spec(None, {**flags, "preset": "paper"}, [str(data)], None).train.preset == "paper"
    limits = build_spec(None, {**flags, "checkpoint_every": 0, "max_attempts": 5}, [str(data)], None)
    assert (limits.train.checkpoint_every, limits.train.max_attempts) == (0, 5)
    swept = build_spec(None, {**flags, "rank": [2, 8], "n_tokens": [4]}, [str(data)], None)
    assert (swept.train.rank, swept.adapter.rank, swept.adapter.n_tokens) == ([2, 8], 2, 4)
