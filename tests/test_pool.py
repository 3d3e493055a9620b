"""Trainer pool members on a real local Ray with the tiny model: fits of two jobs of two tenants share
one forward pass, every fit is registered exactly once, and a member killed mid-run costs each of
its fits at most `checkpoint_every` steps, trained on by another member from the checkpoints."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.test_jobs_spec import job_dict, write_reviews
from ulpt.catalog.jobs import list_fits
from ulpt.catalog.models import AdapterRow, JobRow
from ulpt.catalog.pools import pool_overview
from ulpt.errors import ConflictError
from ulpt.jobs_api import JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.sdk import Client
from ulpt_jobs.driver import JobTarget, create_job
from ulpt_jobs.pool import PoolSettings, pool_key_of, start_member
from ulpt_jobs.state import FIT_KEY

K = 3


def pooled_spec(model: Path, data: Path, steps: int) -> JobSpec:
    train = {"steps": steps, "eval_every": 1000, "batch_size": 2}
    return JobSpec.from_dict(job_dict(model, data, tenant=None, placement="pool", train=train))


def member(target: JobTarget, spec: JobSpec, **settings: Any) -> Any:
    return start_member(
        pool_key_of(spec),
        target.catalog_url,
        target.store_url,
        target.store_options,
        PoolSettings(**settings),
    )


def registered(target: JobTarget, job_ids: list[str]) -> dict[tuple[str, str], list[str]]:
    """{(job, fit key): [tenant of each adapter registered for it]}."""
    with target.catalog.read() as s:
        rows = s.execute(
            select(AdapterRow.job_id, AdapterRow.training_config, AdapterRow.tenant).where(
                AdapterRow.job_id.in_([uuid.UUID(j) for j in job_ids])
            )
        ).all()
    out: dict[tuple[str, str], list[str]] = {}
    for job_id, config, tenant in rows:
        out.setdefault((str(job_id), config[FIT_KEY]), []).append(tenant)
    return out


def test_a_pooled_job_is_only_recorded_and_has_no_driver_to_resume(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = pooled_spec(tiny_model_dirs["llama"], data, steps=4)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        handle = client.jobs.submit(spec)
        status = handle.status()
        with client.catalog.read() as s:
            driver = s.scalar(select(JobRow.driver).where(JobRow.id == uuid.UUID(handle.id)))
        with pytest.raises(ConflictError, match="trained by a trainer pool"):
            client.jobs.resume(handle.id)
    assert (
        status.status == "pending"
        and driver == pool_key_of(spec).name == "pool:" + str(tiny_model_dirs["llama"]) + "/float32/cpu"
    )


def test_a_gpu_job_names_the_pool_its_gpu_members_serve_from_a_machine_without_one(tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=1)
    gpu = JobSpec.from_dict(job_dict(Path("/models/m"), data, placement="pool", use_gpu=True))
    assert pool_key_of(gpu).name == "pool:/models/m/bfloat16/cuda"  # auto is bf16 on every GPU member
    cpu = JobSpec.from_dict(job_dict(Path("/models/m"), data, placement="pool", dtype="bfloat16"))
    assert pool_key_of(cpu).name == "pool:/models/m/bfloat16/cpu"


def test_fits_of_two_jobs_of_two_tenants_share_one_forward_pass(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import ray

    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = pooled_spec(tiny_model_dirs["llama"], data, steps=6)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        target = JobsAPI(client).target()
        jobs = {tenant: create_job(target, spec, tenant)[0] for tenant in ("acme", "globex")}
        pool_member = member(target, spec, capacity=8, checkpoint_every=K, idle_s=1.0)
        try:
            assert ray.get(pool_member.run.remote(), timeout=300) == "idle"
            steps = ray.get(pool_member.stats.remote())["steps"]
        finally:
            ray.kill(pool_member)
        with target.catalog.read() as s:
            ends = {tenant: s.get(JobRow, uuid.UUID(job)).status for tenant, job in jobs.items()}
            overview = pool_overview(s)  # the member left its pool when it stopped
            fits = {tenant: list_fits(s, job) for tenant, job in jobs.items()}
        adapters = registered(target, list(jobs.values()))
    shared = [st for st in steps if st["forwards"] == 1 and st["tenants"] == ["acme", "globex"]]
    assert shared and all(sorted(st["jobs"]) == sorted(jobs.values()) and st["fits"] == 4 for st in shared)
    assert ends == {"acme": "done", "globex": "done"}
    assert [(p.members, p.queue_depth) for p in overview] == []
    assert {f.status for fs in fits.values() for f in fs} == {"done"}
    expected = {(jobs[tenant], f.key): [tenant] for tenant, fs in fits.items() for f in fs}
    assert adapters == expected  # every fit registered once, in its own tenant


def test_a_killed_member_loses_at_most_k_steps_per_fit_and_another_finishes_its_fits(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import ray

    data = write_reviews(tmp_path / "reviews.jsonl", users=3)
    spec = pooled_spec(tiny_model_dirs["llama"], data, steps=300)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        target = JobsAPI(client).target()
        job_id, _ = create_job(target, spec, "acme")
        doomed = member(target, spec, capacity=8, checkpoint_every=K, lease_s=2.0, idle_s=None)
        doomed.run.remote()
        deadline = time.monotonic() + 180
        progress: dict[str, int] = {}
        while len(progress) < 3 or min(progress.values()) < 2 * K + 1:
            assert time.monotonic() < deadline, f"the member did not train: {progress}"
            time.sleep(0.05)
            progress = ray.get(doomed.stats.remote())["progress"]
        held = ray.get(doomed.hold.remote(), timeout=60)  # every fit's step when the member dies
        ray.kill(doomed)
        successor = member(target, spec, capacity=8, checkpoint_every=K, lease_s=2.0, idle_s=5.0)
        try:
            assert ray.get(successor.run.remote(), timeout=300) == "idle"
        finally:
            ray.kill(successor)
        with target.catalog.read() as s:
            fits = list_fits(s, job_id)
            job = s.get(JobRow, uuid.UUID(job_id))
            assert job is not None and job.status == "done"
        adapters = registered(target, [job_id])
    assert {f.status for f in fits} == {"done"} and {f.attempts for f in fits} == {2}
    assert adapters == {(job_id, f.key): ["acme"] for f in fits}  # exactly once, after the kill
    resumed = {f"{job_id}/{f.key}": f.timings["resumed_from_step"] for f in fits}  # type: ignore[index]
    assert set(resumed) == set(held)
    lost = {slot: held[slot] - resumed[slot] for slot in held}
    assert all(0 <= steps <= K for steps in lost.values()), (held, resumed)
    assert all(step > 0 for step in resumed.values())


def test_a_cancelled_pooled_job_is_retired_from_checkpoints_and_never_claimed_again(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import ray

    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = pooled_spec(tiny_model_dirs["llama"], data, steps=300)
    with Client(home=tmp_path / "home", tenant="acme") as client:
        target = JobsAPI(client).target()
        job_id, _ = create_job(target, spec, "acme")
        pool_member = member(target, spec, capacity=8, checkpoint_every=1000, idle_s=2.0)
        try:
            finished = pool_member.run.remote()
            deadline = time.monotonic() + 180
            while not ray.get(pool_member.stats.remote())["progress"]:
                assert time.monotonic() < deadline, "the member did not train"
                time.sleep(0.05)
            client.jobs.cancel(job_id)
            assert ray.get(finished, timeout=120) == "idle"
            progress = ray.get(pool_member.stats.remote())["progress"]
        finally:
            ray.kill(pool_member)
        with target.catalog.read() as s:
            fits = list_fits(s, job_id)
            job = s.get(JobRow, uuid.UUID(job_id))
            assert job is not None and job.status == "cancelled"
    assert progress == {}  # the member holds nothing
    assert {(f.status, f.attempts, f.worker) for f in fits} == {("pending", 0, None)}  # given back
    assert all(f.checkpoint for f in fits)  # saved at retirement, whatever checkpoint_every says
    assert registered(target, [job_id]) == {}
