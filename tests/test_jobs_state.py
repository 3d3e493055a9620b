"""A job's catalog state without Ray: the worker loop in-process, reconcile after a crash, and the
rules for resuming. The Ray path itself is in test_jobs_ray.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import ulpt
from tests.test_jobs_spec import job_dict, review_rows, write_jsonl, write_reviews
from ulpt.catalog import lifecycle
from ulpt.catalog.jobs import as_uuid, claim_fits, set_job_status
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.registry import Registration
from ulpt.sdk import Client
from ulpt_jobs import state
from ulpt_jobs.driver import create_job
from ulpt_jobs.worker import FitRunner


@pytest.fixture()
def client(tmp_path: Path) -> Client:
    with Client(home=tmp_path / "home", tenant="acme") as client:
        yield client


def run_in_process(client: Client, job_id: str, model: ulpt.BaseModel) -> None:
    """What one Ray worker does, minus Ray: keep a pack of fits stepping until none is left."""
    spec = JobSpec.from_dict(JobsAPI(client).get(job_id).status().spec)
    FitRunner(model, client.registry, job_id, "acme", spec, "test:1:rank0").run()


def test_worker_loop_refills_its_pack_and_registers_every_fit(
    client: Client, tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=7)
    spec = JobSpec.from_dict(
        job_dict(tiny_model_dirs["llama"], data, fits_per_worker=3, fits=[{"key": str(u)} for u in range(7)])
    )
    job_id, _ = create_job(JobsAPI(client).target(), spec, "acme")
    run_in_process(client, job_id, tiny_models["llama"])
    fits = JobsAPI(client).get(job_id).fits()
    assert [(f.key, f.status, f.adapter, f.attempts) for f in fits] == [
        (str(u), "done", f"user-{u}:1", 1) for u in range(7)
    ]
    assert all(len(f.metrics["train_curve"]) == 8 for f in fits)


def test_a_job_trains_the_rows_it_was_submitted_with_after_its_files_change_or_vanish(
    client: Client, tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    rows = review_rows("a", 6, 0) + review_rows("b", 6, 0)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    job_id, plan = create_job(
        JobsAPI(client).target(), JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data)), "acme"
    )
    write_jsonl(data, rows[:6] + review_rows("b", 6, 1))  # b's rows are edited after submission,
    with client.catalog.session() as session:  # a worker claims both fits and dies,
        claim_fits(session, job_id, 2, "dead:1:rank0")
        state.reconcile(session, job_id)
    data.unlink()  # and the file is gone before the restarted worker runs
    run_in_process(client, job_id, tiny_models["llama"])
    fits = {f.key: f for f in JobsAPI(client).get(job_id).fits()}
    assert [(fits[k].status, fits[k].attempts) for k in "ab"] == [("done", 2), ("done", 2)]
    submitted = {f.key: f.fingerprint for f in plan.fits}
    for record in client.adapters.iter(job_id=job_id):  # trained on the submitted rows, not the edited ones
        assert record.dataset_fingerprint == submitted[record.name.removeprefix("user-")]


def test_reconcile_recovers_registered_fits_and_requeues_the_rest(
    client: Client, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A worker died after registering fit 0 but before marking it done, while holding fits 0-2."""
    data = write_reviews(tmp_path / "reviews.jsonl", users=4)
    job_id, _ = create_job(
        JobsAPI(client).target(), JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data)), "acme"
    )
    with client.catalog.session() as session:
        claimed = claim_fits(session, job_id, 3, "dead:1:rank0")
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=4, seed=1), 64, base_model="m")
    record = client.adapters.register_many(
        [Registration(adapter, name="user-0", job_id=job_id, training_config={state.FIT_KEY: claimed[0].key})]
    )[0]
    with client.catalog.session() as session:
        assert state.reconcile(session, job_id) == {"recovered": 1, "exhausted": 0, "requeued": 2, "open": 3}
    fits = {f.key: f for f in JobsAPI(client).get(job_id).fits()}
    assert (fits["0"].status, fits["0"].adapter_id) == ("done", record.id)
    assert [fits[k].status for k in ("1", "2", "3")] == ["pending"] * 3


def test_resume_is_refused_while_the_driver_beats_and_after_the_job_is_done(
    client: Client, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    jobs = JobsAPI(client)
    job = jobs.submit(JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data)), start=False)
    assert job.status().status == "pending" and job.status().counts["pending"] == 2
    with client.catalog.session() as session:  # a live driver's claim: its name and a fresh heartbeat
        only = lifecycle.NEW_JOB
        assert lifecycle.claim_job(session, as_uuid(job.id), "elsewhere:1", only=only, stale_before=None)
    with pytest.raises(ulpt.UlptError, match=r"is running \(its driver's heartbeat was 0 s ago\)") as err:
        jobs.resume(job.id)
    assert "elsewhere:1" not in str(err.value)  # a driver's host and pid are the operator's, not a tenant's
    with client.catalog.session() as session:
        set_job_status(session, job.id, "done")
    with pytest.raises(ulpt.UlptError, match="is already done"):
        jobs.resume(job.id)
    with pytest.raises(ulpt.UlptError, match="no job"):
        JobsAPI(Client(home=client.home, tenant="other")).get(job.id)  # another tenant's job is not found


def test_train_wait_exits_non_zero_and_counts_the_failed_fits(
    client: Client,
    tiny_models: dict[str, ulpt.BaseModel],
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ulpt train --wait` is what scripts check: a job that trained only some adapters is no success."""
    from ulpt.cli.train import _report

    rows = review_rows("a", 6, 0) + review_rows("b", 6, 0) + [{"user_id": "c", "text": "x", "label": None}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    job_id, _ = create_job(
        JobsAPI(client).target(), JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data)), "acme"
    )
    run_in_process(client, job_id, tiny_models["llama"])
    with client.catalog.session() as session:
        set_job_status(session, job_id, "done")
    for as_json in (True, False):
        with pytest.raises(SystemExit) as info:
            _report(JobsAPI(client).get(job_id), wait=True, as_json=as_json)
        err = capsys.readouterr().err
        assert info.value.code == 1
        assert (
            err.strip() == f"error: 1 of 3 fit(s) of job {job_id} failed; `ulpt jobs show {job_id}` says why"
        )


def test_a_bad_spec_is_refused_before_anything_is_recorded(
    client: Client, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, dataset={"target": "stars"}))
    with pytest.raises(ulpt.UlptError, match=r"dataset\.target: no column 'stars'"):
        JobsAPI(client).submit(spec)
    assert JobsAPI(client).list() == []


def run_main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """`ulpt ARGS` through the real entry point (one-line errors, exit codes)."""
    import sys

    import ulpt.cli

    if "train" not in {c.name for c in ulpt.cli.app.registered_commands}:
        ulpt.cli._register_commands()
    monkeypatch.setattr(ulpt.cli, "_register_commands", lambda: None)
    monkeypatch.setattr(sys, "argv", ["ulpt", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        ulpt.cli.main()
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_cli_validates_a_spec_and_its_flags_before_anything_runs(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    import yaml

    data = write_reviews(tmp_path / "reviews.jsonl", users=3)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job_dict(tiny_model_dirs["llama"], data)))
    home = ["--home", str(tmp_path / "home")]
    code, out, err = run_main(["train", str(spec_file), "--rank", "64", *home], monkeypatch, capsys)
    assert code == 1 and err == "error: adapter.rank must be below the model's hidden size 64, got 64\n"
    code, out, _ = run_main(
        ["train", str(spec_file), "--dry-run", "--json", "--seed", "0", *home], monkeypatch, capsys
    )
    plan = json.loads(out)
    assert code == 0 and plan["fits"] == 3 and plan["first_fits"][0]["adapter"]["seed"] == 0
    code, _, err = run_main(
        [
            "train",
            "--base-model",
            str(tiny_model_dirs["llama"]),
            "--data",
            str(data),
            "--input",
            "text",
            "--target",
            "stars",
            *home,
        ],
        monkeypatch,
        capsys,
    )
    assert (
        code == 1 and err.startswith("error: dataset.target: no column 'stars' in ") and err.count("\n") == 1
    )
    code, out, _ = run_main(["jobs", "list", "--json", "--tenant", "acme", *home], monkeypatch, capsys)
    assert json.loads(out) == []  # nothing was recorded by the refused or dry runs
