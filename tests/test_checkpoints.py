"""Mid-fit checkpoints and the attempts cap: a worker that dies mid-job costs each of its fits at most
`checkpoint_every` steps and changes no result; a fit that keeps taking its worker down fails alone."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import ulpt
from tests.reliability_fixtures import ReliabilityRun
from tests.test_jobs_spec import job_dict, review_rows, write_reviews
from ulpt.catalog.jobs import claim_fits, list_fits, set_job_status
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.sdk import Client
from ulpt.training import FitRequest, PackedTrainer, TrainConfig, checkpoint, sweep
from ulpt.training.api import fit_metrics, prepare_fit
from ulpt_jobs import state
from ulpt_jobs.driver import create_job
from ulpt_jobs.worker import FitRunner

K = 4
STEPS = 12


class WorkerDied(Exception):
    """What the test's doomed worker raises instead of its next step (as if its node vanished)."""


def spec_for(model: Path, data: Path, **train: Any) -> JobSpec:
    """5 fits, one of them a 2-rate sweep, 3 FitStates per pack: fits start and end at different steps."""
    fits = [{"key": "0", "train": {"lr": [0.05, 0.2]}}] + [{"key": str(u)} for u in range(1, 5)]
    return JobSpec.from_dict(
        job_dict(
            model,
            data,
            fits_per_worker=3,
            fits=fits,
            train={"steps": STEPS, "eval_every": 5, "checkpoint_every": K, **train},
        )
    )


def run_worker(client: Client, job_id: str, model: ulpt.BaseModel, die_at: int | None = None) -> FitRunner:
    """One worker in-process; with `die_at`, it stops dead before its pack's die_at-th step."""
    spec = JobSpec.from_dict(JobsAPI(client).get(job_id).status().spec)
    runner = FitRunner(model, client.registry, job_id, "acme", spec, f"test:{die_at}:rank0")
    if die_at is not None:
        advance, calls = runner.trainer.advance, itertools.count(1)

        def doomed(fits: Any) -> Any:
            if next(calls) >= die_at:
                raise WorkerDied
            return advance(fits)

        runner.trainer.advance = doomed  # type: ignore[method-assign]
        with pytest.raises(WorkerDied):
            runner.run()
    else:
        runner.run()
    return runner


def adapters_by_fit(client: Client, job_id: str) -> dict[str, dict[str, torch.Tensor]]:
    return {
        (record.training_config or {})[state.FIT_KEY]: client.adapters.load(
            f"{record.name}:{record.version}"
        ).tensors()
        for record in client.adapters.iter(job_id=job_id)
    }


@pytest.mark.reliability
def test_a_fit_resumed_after_its_worker_died_ends_as_if_never_interrupted(
    tiny_models: dict[str, ulpt.BaseModel],
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    reliability: ReliabilityRun,
) -> None:
    """A worker stops dead mid-job (its pack a few steps past a checkpoint) and another claims its fits:
    each resumes from its last checkpoint, loses at most `checkpoint_every` steps, and ends with the
    parameters, curve and best checkpoint of the same job run without interruption (within 1e-5, fp32)."""
    data = write_reviews(tmp_path / "reviews.jsonl", users=5)
    spec = spec_for(tiny_model_dirs["llama"], data)
    model = tiny_models["llama"]
    with (
        Client(home=tmp_path / "a", tenant="acme") as whole,
        Client(home=tmp_path / "b", tenant="acme") as cut,
    ):
        plain_id, _ = create_job(JobsAPI(whole).target(), spec, "acme")
        run_worker(whole, plain_id, model)
        job_id, _ = create_job(JobsAPI(cut).target(), spec, "acme")
        dead = run_worker(cut, job_id, model, die_at=19)  # the second pack is 6 steps in
        reached = {key: max(f.step for f in fits) for key, fits in dead.candidates.items()}
        assert dead.checkpoints.written >= 2 and reached and 0 < min(reached.values())
        with cut.catalog.session() as session:  # the restarted worker group's first act
            state.reconcile(session, job_id)
        run_worker(cut, job_id, model)
        plain = {f.key: f for f in JobsAPI(whole).get(plain_id).fits()}
        resumed = {f.key: f for f in JobsAPI(cut).get(job_id).fits()}
        trained, expected = adapters_by_fit(cut, job_id), adapters_by_fit(whole, plain_id)
    assert {f.status for f in resumed.values()} == {"done"} and set(trained) == set(expected) == set(plain)
    largest_gap = 0.0
    for key in plain:
        for name, tensor in expected[key].items():
            torch.testing.assert_close(trained[key][name], tensor, atol=1e-5, rtol=0)
            largest_gap = max(largest_gap, (trained[key][name] - tensor).abs().max().item())
        a, b = plain[key].metrics, resumed[key].metrics
        torch.testing.assert_close(
            torch.tensor(b["train_curve"]), torch.tensor(a["train_curve"]), atol=1e-5, rtol=0
        )
        assert [h["step"] for h in b["eval_history"]] == [h["step"] for h in a["eval_history"]]
        assert (b["best_step"], b.get("sweep") is None) == (a["best_step"], a.get("sweep") is None)
    for key, step in reached.items():  # every fit in flight at the death lost at most K steps
        start = resumed[key].timings["resumed_from_step"]
        assert step - K <= start <= step and resumed[key].attempts == 2
    assert any(resumed[key].timings["resumed_from_step"] > 0 for key in reached)
    assert {f.timings["resumed_from_step"] for k, f in resumed.items() if k not in reached} == {0}
    lost = {key: step - resumed[key].timings["resumed_from_step"] for key, step in reached.items()}
    reliability.record(
        "checkpoint_resume",
        {
            "fits": len(plain),
            "steps_per_fit": STEPS,
            "checkpoint_every": K,
            "fits_in_flight_at_death": len(reached),
            "steps_trained_at_death": sum(reached.values()),
            "steps_kept_by_checkpoints": sum(reached.values()) - sum(lost.values()),
            "steps_lost": sum(lost.values()),
            "steps_lost_per_fit_max": max(lost.values()),
            "steps_lost_bound": f"<= {K} per fit in flight",
            "largest_parameter_difference_vs_uninterrupted": largest_gap,
        },
    )


def test_checkpoint_restores_a_sweep_mid_flight_into_fresh_fits(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    """The codec alone: params, AdamW moments, schedule, row cursor and best-so-far all carry over."""
    model = tiny_models["llama"]
    rows = review_rows("u", 7, 0)
    rows = [{"input": r["text"], "target": r["label"]} for r in rows]
    request = FitRequest(
        "u",
        ulpt.AdapterSpec(n_tokens=4),
        rows[:5],
        rows[5:],
        TrainConfig(steps=10, lr=[0.05, 0.3], eval_every=3, batch_size=3),
    )

    def fresh() -> list[Any]:
        return [prepare_fit(model, c, group="u") for c in sweep.expand(request)]

    whole = fresh()
    PackedTrainer(model).run(whole)
    first, trainer = fresh(), PackedTrainer(model)
    for _ in range(7):
        trainer.advance(first)
    blob = checkpoint.encode({"u": first})
    assert checkpoint.encode({"u": first}) == blob  # content-addressed: same state, same bytes
    second = fresh()
    checkpoint.restore(second, checkpoint.decode(blob)["u"])
    assert [f.step for f in second] == [7, 7] and second[0].cursor == 21
    PackedTrainer(model).run(second)
    for a, b in zip(whole, second):
        for name, tensor in a.adapter.tensors().items():
            torch.testing.assert_close(b.adapter.tensors()[name], tensor, atol=1e-5, rtol=0)
        assert fit_metrics(b)["best_step"] == fit_metrics(a)["best_step"]
    with pytest.raises(checkpoint.CheckpointError, match="holds"):
        checkpoint.restore(fresh()[:1], checkpoint.decode(blob)["u"])
    with pytest.raises(checkpoint.CheckpointError, match="not a fit checkpoint"):
        checkpoint.decode(ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=4), 64).to_bytes())


def test_gc_keeps_the_checkpoints_of_unfinished_fits_only(
    tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=5)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        job_id, _ = create_job(JobsAPI(client).target(), spec_for(tiny_model_dirs["llama"], data), "acme")
        run_worker(client, job_id, tiny_models["llama"], die_at=19)
        with client.catalog.read() as session:
            live = {f.checkpoint for f in list_fits(session, job_id) if f.checkpoint}
        assert live and all(client.registry.store.exists(key) for key in live)
        client.registry.collect_garbage(timedelta(0))
        assert all(client.registry.store.exists(key) for key in live)  # unfinished fits resume from these
        with client.catalog.session() as session:
            state.reconcile(session, job_id)
        run_worker(client, job_id, tiny_models["llama"])
        with client.catalog.read() as session:
            assert {f.checkpoint for f in list_fits(session, job_id)} == {None}
        report = client.registry.collect_garbage(timedelta(0))
        assert live <= set(report.orphan_blobs) and not any(client.registry.store.exists(k) for k in live)
        assert len(list(client.adapters.iter(job_id=job_id))) == 5  # nothing else of the job was touched
        for record in client.adapters.iter(job_id=job_id):
            client.adapters.load(record.name)


def test_checkpoint_every_0_writes_none_and_fits_restart_from_step_0(
    tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=5)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        job_id, _ = create_job(
            JobsAPI(client).target(), spec_for(tiny_model_dirs["llama"], data, checkpoint_every=0), "acme"
        )
        dead = run_worker(client, job_id, tiny_models["llama"], die_at=19)
        assert dead.checkpoints.written == 0
        with client.catalog.session() as session:
            state.reconcile(session, job_id)
        run_worker(client, job_id, tiny_models["llama"])
        fits = JobsAPI(client).get(job_id).fits()
    assert {f.status for f in fits} == {"done"} and {f.timings["resumed_from_step"] for f in fits} == {0}


def test_a_fit_that_took_its_worker_down_max_attempts_times_fails_and_the_job_goes_on(
    tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=3)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, train={"max_attempts": 2}))
    with Client(home=tmp_path / "home", tenant="acme") as client:
        job_id, _ = create_job(JobsAPI(client).target(), spec, "acme")
        for attempt in (1, 2):  # fit 0 is claimed and its worker dies, twice
            with client.catalog.session() as session:
                (claimed,) = claim_fits(session, job_id, 1, f"dead:{attempt}:rank0")
                assert (claimed.key, claimed.attempts) == ("0", attempt)
                counts = state.reconcile(session, job_id)
        assert counts == {"recovered": 0, "exhausted": 1, "requeued": 0, "open": 2}
        run_worker(client, job_id, tiny_models["llama"])
        fits = {f.key: f for f in JobsAPI(client).get(job_id).fits()}
    assert fits["0"].status == "failed" and fits["0"].attempts == 2
    assert "on each of its 2 attempt(s) (train.max_attempts)" in (fits["0"].error or "")
    assert [(fits[k].status, fits[k].attempts) for k in "12"] == [("done", 1), ("done", 1)]


def test_job_wide_train_fields_are_refused_per_fit(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    for field in ("checkpoint_every", "max_attempts"):
        with pytest.raises(ulpt.UlptError, match=rf"fits\[0\]\.train\.{field}: set for the whole job"):
            JobSpec.from_dict(
                job_dict(tiny_model_dirs["llama"], data, fits=[{"key": "0", "train": {field: 5}}])
            )
    with pytest.raises(ulpt.UlptError, match="max_attempts"):
        JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, train={"max_attempts": 0}))
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data))
    assert (spec.train.checkpoint_every, spec.train.max_attempts) == (25, 3)
    assert "checkpoint_every" not in spec.train_for(None)[0].to_dict()  # not a fit's hyperparameter


def test_a_cancel_checkpoints_the_pack_and_a_resume_goes_on_where_it_stopped(
    tiny_models: dict[str, ulpt.BaseModel],
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ulpt_jobs.worker

    monkeypatch.setattr(ulpt_jobs.worker, "STOP_CHECK_S", 0.0)  # read the job's status before every step
    data = write_reviews(tmp_path / "reviews.jsonl", users=5)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        job_id, _ = create_job(JobsAPI(client).target(), spec_for(tiny_model_dirs["llama"], data), "acme")
        spec = JobSpec.from_dict(JobsAPI(client).get(job_id).status().spec)
        runner = FitRunner(tiny_models["llama"], client.registry, job_id, "acme", spec, "test:1:rank0")
        advance, calls = runner.trainer.advance, itertools.count(1)

        def cancel_at_7(fits: Any) -> Any:
            if next(calls) == 7:
                with client.catalog.session() as session:
                    set_job_status(session, job_id, "cancelled")
            return advance(fits)

        runner.trainer.advance = cancel_at_7  # type: ignore[method-assign]
        runner.run()
        held = {key: max(f.step for f in fits) for key, fits in runner.candidates.items()}
        stopped = {f.key: f for f in JobsAPI(client).get(job_id).fits()}
        assert set(held.values()) == {7} and {stopped[k].attempts for k in held} == {0}
        assert {stopped[k].status for k in stopped} == {"pending"}  # nothing was done yet
        with client.catalog.session() as session:  # what `ulpt train --resume` does first
            set_job_status(session, job_id, "running")
            state.reconcile(session, job_id)
        run_worker(client, job_id, tiny_models["llama"])
        fits = {f.key: f for f in JobsAPI(client).get(job_id).fits()}
    assert {f.status for f in fits.values()} == {"done"} and {f.attempts for f in fits.values()} == {1}
    assert {key: fits[key].timings["resumed_from_step"] for key in held} == held  # not one step lost
