"""Bulk training jobs on a real local Ray (the session's): `ulpt train spec.yaml --wait --json` end to end
into a SQLite catalog and a local store, packed fits equal to fits trained alone, bad fits failing
alone, and a resume that never trains a finished fit again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

import ulpt
from tests.test_jobs_spec import job_dict, review_rows, write_jsonl, write_reviews
from ulpt.cli import app
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec, derive_seed
from ulpt.sdk import Client
from ulpt.training import FitRequest
from ulpt_jobs.plan import make_plan

USERS = 8
ALONE_KEY = "3"


def run_cli(*args: str) -> Any:
    if "train" not in {c.name for c in app.registered_commands}:
        from ulpt.cli import _register_commands

        _register_commands()
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def cli_job(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One job through the CLI: 8 users that train, one whose text is too long, one without targets."""
    root = tmp_path_factory.mktemp("cli-job")
    rows = [r for u in range(USERS) for r in review_rows(u, 6, 0)]
    rows += [{"user_id": "long", "text": "good " * 600, "label": "positive"}] * 3
    rows += [{"user_id": "empty", "text": "the food was", "label": None}] * 3
    data = write_jsonl(root / "reviews.jsonl", rows)
    spec = job_dict(
        tiny_model_dirs["llama"],
        data,
        dataset={"eval_fraction": 0.34},
        adapter={"seed_policy": "per_fit"},
        train={"steps": 10},
        num_workers=2,
        fits_per_worker=3,  # 8 fits through packs of 3: finished fits are replaced while others train
        max_rows_per_forward=5,  # rows of different fits share (and straddle) forward passes
    )
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    home = root / "home"
    started = time.monotonic()
    result = run_cli("train", str(root / "job.yaml"), "--wait", "--json", "--home", str(home))
    return {
        "exit_code": result.exit_code,
        "stderr": result.stderr,
        "output": json.loads(result.stdout),
        "home": home,
        "spec": JobSpec.from_dict(spec),
        "seconds": time.monotonic() - started,
    }


def test_train_wait_json_prints_the_finished_job(cli_job: dict[str, Any]) -> None:
    out = cli_job["output"]
    assert cli_job["exit_code"] == 1, out  # some fits failed: a script must not take this for success
    assert f"2 of 10 fit(s) of job {out['id']} failed" in cli_job["stderr"]
    assert out["status"] == "done" and out["tenant"] == "acme" and out["n_fits"] == USERS + 2
    assert out["counts"] == {"pending": 0, "running": 0, "done": USERS, "failed": 2}
    assert out["error"] == "2 of 10 fit(s) failed"
    fits = {fit["key"]: fit for fit in out["fits"]}
    for user in range(USERS):
        fit = fits[str(user)]
        assert (fit["status"], fit["adapter"], fit["attempts"]) == ("done", f"user-{user}:1", 1)
        assert fit["metrics"]["steps"] == 10 and fit["metrics"]["eval_loss"] > 0
        assert 0 <= fit["metrics"]["eval_accuracy"] <= 1
    assert all(fit["worker"].endswith(("rank0", "rank1")) for fit in out["fits"] if fit["worker"])
    # Two workers: the driver put the base into Ray's object store and both used that one copy.
    assert "share_weights_s" in out["timings"]
    assert {fit["timings"]["base_weights"] for fit in out["fits"] if fit["status"] == "done"} == {"shared"}
    # The fixed time of `fit()` is accounted for: starting the workers, their setup, stopping them.
    timings = out["timings"]
    parts = [timings["workers_start_s"], timings["worker_setup_s"], timings["trainer_stop_s"]]
    assert all(part >= 0 for part in parts) and sum(parts) <= timings["train_s"]


def test_bad_fits_fail_alone_with_their_reason(cli_job: dict[str, Any]) -> None:
    fits = {fit["key"]: fit for fit in cli_job["output"]["fits"]}
    assert fits["long"]["status"] == "failed" and fits["long"]["adapter"] is None
    assert "more than the model's 512" in fits["long"]["error"]
    assert fits["empty"]["status"] == "failed"
    assert fits["empty"]["error"] == "no usable rows (3 row(s) lack an input or a target)"


def test_each_adapter_is_registered_with_metrics_seed_fingerprint_and_job(cli_job: dict[str, Any]) -> None:
    job_id = cli_job["output"]["id"]
    with Client(home=cli_job["home"], tenant="acme") as client:
        records = {r.name: r for r in client.adapters.iter(job_id=job_id)}
        fits = {fit.key: fit for fit in JobsAPI(client).get(job_id).fits()}
        assert sorted(records) == sorted(f"user-{u}" for u in range(USERS))
        for user in range(USERS):
            record = records[f"user-{user}"]
            assert record.job_id == job_id and record.tags == {"project": "demo"}
            assert record.seed == derive_seed(1234, str(user))
            assert record.dataset_fingerprint and record.dataset_fingerprint.startswith("sha256:")
            assert record.training_config and record.training_config["fit_key"] == str(user)
            assert record.metrics["eval_loss"] == fits[str(user)].metrics["eval_loss"]
            assert fits[str(user)].adapter_id == record.id
            adapter = record.load()
            assert adapter.num_trainable_params == 4 * 2 + 2 * 64
            assert torch.isfinite(adapter.prompt_embeddings()).all()


def test_a_packed_fit_follows_the_curve_it_would_follow_alone(
    cli_job: dict[str, Any], tiny_models: dict[str, ulpt.BaseModel], tmp_path: Path
) -> None:
    """The fit trained in a pack of 3 with chunked forwards equals the same fit trained alone in-process."""
    spec: JobSpec = cli_job["spec"].with_absolute_paths()
    planned = make_plan(spec, tmp_path).by_key()[ALONE_KEY]
    request = FitRequest(ALONE_KEY, planned.adapter, planned.train_rows, planned.eval_rows, planned.train)
    alone_adapter, alone = ulpt.train_adapters(tiny_models["llama"], [request])[ALONE_KEY]
    with Client(home=cli_job["home"], tenant="acme") as client:
        job = JobsAPI(client).get(cli_job["output"]["id"])
        packed = next(fit for fit in job.fits() if fit.key == ALONE_KEY)
        packed_adapter = client.adapters.get(packed.adapter or "").load()
    assert alone_adapter is not None and packed.metrics["steps"] == alone["steps"] == 10
    torch.testing.assert_close(
        torch.tensor(packed.metrics["train_curve"]), torch.tensor(alone["train_curve"]), atol=1e-3, rtol=1e-3
    )
    torch.testing.assert_close(
        packed_adapter.prompt_embeddings(), alone_adapter.prompt_embeddings(), atol=1e-3, rtol=1e-3
    )


def test_jobs_list_show_and_plot_from_the_catalog(cli_job: dict[str, Any], tmp_path: Path) -> None:
    job_id, home = cli_job["output"]["id"], str(cli_job["home"])
    shown = json.loads(run_cli("jobs", "show", job_id, "--json", "--home", home, "--tenant", "acme").stdout)
    assert shown["status"] == "done" and len(shown["fits"]) == USERS + 2
    assert "train_curve" not in shown["fits"][0]["metrics"]
    listed = json.loads(run_cli("jobs", "list", "--json", "--home", home, "--tenant", "acme").stdout)
    assert [job["id"] for job in listed] == [job_id]
    other = json.loads(run_cli("jobs", "list", "--json", "--home", home).stdout)
    assert other == []  # another tenant does not see acme's jobs
    text = " ".join(run_cli("jobs", "show", job_id, "--home", home, "--tenant", "acme").stdout.split())
    assert "done: 8 done, 2 failed, 0 running, 0 pending of 10" in text and "2 of 10 fit(s) failed" in text
    png = tmp_path / "curves.png"
    result = run_cli("jobs", "plot", job_id, "-o", str(png), "--home", home, "--tenant", "acme")
    assert result.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ulpt.UlptError, match="no job"):  # `ulpt` prints it as one line, exit code 1
        run_cli("jobs", "show", job_id, "--home", home, "--tenant", "other")


def test_resume_trains_only_the_unfinished_fits(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Cancel a job after two fits, resume it: finished fits keep their single training and adapter."""
    data = write_reviews(tmp_path / "reviews.jsonl", users=8)
    spec = JobSpec.from_dict(
        job_dict(tiny_model_dirs["llama"], data, train={"steps": 300, "eval_every": 1000}, fits_per_worker=1)
    )
    with Client(home=tmp_path / "home", tenant="acme") as client:
        jobs = JobsAPI(client)
        job = jobs.submit(spec)
        deadline = time.monotonic() + 120
        while job.status().counts["done"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        job.cancel()
        first = job.wait(timeout=120)
        assert first.status == "cancelled"
        before = {fit.key: fit for fit in job.fits()}
        finished = {key for key, fit in before.items() if fit.status == "done"}
        assert 2 <= len(finished) < 8 and first.counts["running"] == 0

        resumed = jobs.resume(job.id).wait(timeout=300)
        assert resumed.status == "done" and resumed.counts["done"] == 8
        after = {fit.key: fit for fit in job.fits()}
        for key in finished:  # trained once, same adapter, untouched by the resume
            assert after[key].attempts == 1 and after[key].adapter_id == before[key].adapter_id
            assert after[key].finished_at == before[key].finished_at
        names = [record.name for record in client.adapters.iter(job_id=job.id)]
        assert sorted(names) == sorted(f"user-{u}" for u in range(8))  # one adapter per fit, none twice
        assert all(record.version == 1 for record in client.adapters.iter(job_id=job.id))
        assert resumed.attempt == 2 and "attempt" not in resumed.timings
        with pytest.raises(ulpt.UlptError, match="already done"):
            jobs.resume(job.id)


CANCEL_TRIES = 3


def test_a_cancel_right_after_submit_is_never_lost(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Cancel a many-fit job the moment `submit` returns, several times: each ends cancelled with no fit
    trained (a driver thread that started after the cancel used to write running over it)."""
    data = write_reviews(tmp_path / "reviews.jsonl", users=12)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, train={"steps": 5, "eval_every": 1000}))
    outcomes = []
    with Client(home=tmp_path / "home", tenant="acme") as client:
        jobs = JobsAPI(client)
        for _ in range(CANCEL_TRIES):
            job = jobs.submit(spec)
            job.cancel()
            final = job.wait(timeout=300)
            outcomes.append((final.status, final.counts["done"], final.counts["pending"]))
    assert outcomes == [("cancelled", 0, 12)] * CANCEL_TRIES
