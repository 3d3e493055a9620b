"""A fit's rows live in the store as a content-addressed JSON blob written at submission: workers fetch
the fits they claim and never read the dataset, `ulpt gc` keeps the blobs until their job is done, and
a job with four Ray workers reads its source data exactly once (counted in every process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

import ulpt
from tests.ray_fixtures import ray_env
from tests.test_jobs_spec import job_dict, review_rows, write_jsonl, write_reviews
from ulpt.catalog.jobs import set_job_status
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.sdk import Client
from ulpt_jobs.driver import create_job, restore_fit_data
from ulpt_jobs.fit_data import data_key, dataset_fingerprint
from ulpt_jobs.worker import FitRunner


@pytest.fixture()
def client(tmp_path: Path) -> Client:
    with Client(home=tmp_path / "home", tenant="acme") as client:
        yield client


def stored_keys(client: Client) -> set[str]:
    return {entry.key for entry in client.registry.store.list_blobs()}


def test_submission_stores_each_fits_split_once_as_json_named_by_its_fingerprint(
    client: Client, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=3)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data, dataset={"eval_fraction": 0.34}))
    _, plan = create_job(JobsAPI(client).target(), spec, "acme")
    keys = {data_key(fit.fingerprint) for fit in plan.fits if fit.fingerprint}
    assert len(keys) == 3 and stored_keys(client) == keys
    for fit in plan.fits:
        split = json.loads(client.registry.store.get(data_key(fit.fingerprint or "")))
        assert split == {"train": fit.train_rows, "eval": fit.eval_rows} and split["eval"]
        assert dataset_fingerprint(split["train"], split["eval"]) == fit.fingerprint
    create_job(JobsAPI(client).target(), spec, "acme")  # the same rows again: the same blobs, no new ones
    assert stored_keys(client) == keys


def test_gc_keeps_a_jobs_data_until_the_job_is_done(
    client: Client, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data))
    job_id, plan = create_job(JobsAPI(client).target(), spec, "acme")
    keys = {data_key(fit.fingerprint or "") for fit in plan.fits}
    # pending, running, failed, cancelled: each can still (re)start and train (a resume runs it again)
    for moves in ((), ("running",), ("failed",), ("running", "cancelled")):
        with client.catalog.session() as session:
            for status in moves:
                set_job_status(session, job_id, status)
        report = client.gc(grace=timedelta(0))
        assert stored_keys(client) == keys and report.orphan_blobs == [], moves
    with client.catalog.session() as session:
        set_job_status(session, job_id, "running")
        set_job_status(session, job_id, "done")
    report = client.gc(grace=timedelta(0))
    assert sorted(report.orphan_blobs) == sorted(keys) and stored_keys(client) == set()


def test_a_resumed_job_without_data_blobs_gets_them_back_while_its_rows_still_match(
    client: Client, tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A job recorded before fits had data blobs: the resuming driver re-reads its sources once."""
    rows = review_rows("a", 6, 0) + review_rows("b", 6, 0)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], data))
    target = JobsAPI(client).target()
    job_id, plan = create_job(target, spec, "acme")
    client.registry.store.delete_many(stored_keys(client))
    write_jsonl(data, rows[:6] + review_rows("b", 6, 1))  # b's rows changed since the submission
    stored = JobSpec.from_dict(JobsAPI(client).get(job_id).status().spec)
    assert restore_fit_data(target, job_id, stored) == 1
    assert stored_keys(client) == {data_key(plan.by_key()["a"].fingerprint or "")}
    FitRunner(tiny_models["llama"], client.registry, job_id, "acme", stored, "test:1:rank0").run()
    fits = {f.key: f for f in JobsAPI(client).get(job_id).fits()}
    assert fits["a"].status == "done" and fits["b"].status == "failed"
    assert fits["b"].error is not None and fits["b"].error.startswith("fit b: its rows (sha256:")
    assert fits["b"].error.endswith(f"are missing from the store {client.registry.store.url}")
    assert restore_fit_data(target, job_id, stored) == 0  # nothing pending lacks its blob any more


READ_COUNTER = """
import importlib.abc, importlib.util, os, sys

LOG = {log!r}


def note(what):
    with open(LOG, "a") as out:
        out.write(f"{{os.getpid()}} {{what}}\\n")


class CountDataReads(importlib.abc.MetaPathFinder):
    \"\"\"Wraps the dataset readers of ulpt_jobs.sources, whichever process imports it.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name != "ulpt_jobs.sources":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for reader in ("read_table", "read_per_file"):
                def counted(*args, _real=getattr(module, reader), _reader=reader, **kwargs):
                    note("read " + _reader)
                    return _real(*args, **kwargs)
                setattr(module, reader, counted)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, CountDataReads())
note("started")
"""

DRIVER = """
import json, os, sys
from pathlib import Path

import ray

from tests.test_jobs_spec import job_dict
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.sdk import Client
from ulpt_jobs.driver import create_job, run_job

model, data, home = sys.argv[1:4]
ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["RAY_TMPDIR"])
spec = job_dict(Path(model), Path(data), num_workers=4, fits_per_worker=1, train={"steps": 4})
spec = JobSpec.from_dict(spec)
with Client(home=home, tenant="acme") as client:
    target = JobsAPI(client).target()
    job_id, _ = create_job(target, spec, "acme")
    Path(data).unlink()  # workers that read the dataset instead of their fits' blobs would fail
    status = run_job(target, job_id)
    workers = [fit.worker for fit in JobsAPI(client).get(job_id).fits()]
print(json.dumps({"status": status.status, "counts": status.counts, "workers": workers}))
"""


def test_a_job_with_four_workers_reads_its_data_once(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Every process of the job (driver, Ray workers) counts calls of the dataset readers in one file."""
    log = tmp_path / "reads.log"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(READ_COUNTER.format(log=str(log)))
    data = write_reviews(tmp_path / "reviews.jsonl", users=8)
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        **ray_env(),
        "PYTHONPATH": os.pathsep.join([str(hook), str(root), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, "-c", textwrap.dedent(DRIVER), str(tiny_model_dirs["llama"]), str(data)]
    done = subprocess.run(
        [*args, str(tmp_path / "home")], env=env, cwd=root, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "done" and result["counts"]["done"] == 8

    events = [line.split(" ", 1) for line in log.read_text().splitlines()]
    hooked = {pid for pid, what in events if what == "started"}
    training = {worker.split(":")[1] for worker in result["workers"]}
    assert training <= hooked and len(training) >= 1  # the counter ran in every process that trained
    reads = [(pid, what) for pid, what in events if what.startswith("read")]
    assert len(reads) == 1 and reads[0][0] not in training, reads  # the driver's, at submission
