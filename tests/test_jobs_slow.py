"""Slow tier of bulk training: a 1,000-fit job, and a job that loses a worker node half-way.

The node-loss scenario runs in a subprocess (`python -m tests.test_jobs_slow node-loss DIR`): a
`ray.cluster_utils.Cluster` cannot share a process with the session's local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability_fixtures import ReliabilityRun
from tests.test_jobs_spec import job_dict, write_reviews

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_a_thousand_fits_train_as_one_job(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from ulpt.jobs_api import JobsAPI
    from ulpt.jobspec import JobSpec
    from ulpt.sdk import Client

    data = write_reviews(tmp_path / "reviews.jsonl", users=1000)
    spec = JobSpec.from_dict(
        job_dict(tiny_model_dirs["llama"], data, num_workers=2, fits_per_worker=250, train={"steps": 10})
    )
    with Client(home=tmp_path / "home", tenant="acme") as client:
        started = time.monotonic()
        job = JobsAPI(client).submit(spec)
        status = job.wait(timeout=1200)
        seconds = time.monotonic() - started
        assert status.status == "done" and status.counts["done"] == 1000, status
        fits = job.fits()
        assert all(fit.attempts == 1 and fit.adapter for fit in fits)
        names = {record.name for record in client.adapters.iter(job_id=job.id, limit=500)}
        assert names == {f"user-{u}" for u in range(1000)}
    print(f"1,000 fits in {seconds:.0f} s ({status.timings})")


@pytest.mark.reliability
def test_losing_a_worker_node_mid_job_costs_only_unfinished_fits(
    tmp_path: Path, reliability: ReliabilityRun
) -> None:
    """A worker node of a 3-node Ray cluster is removed while a 240-fit job runs: the job still finishes,
    every fit is recorded exactly once, no fit finished before the loss is trained again, and every fit
    in flight resumes from its last mid-fit checkpoint, losing at most `checkpoint_every` steps.

    The steps lost after a checkpoint die with the worker's memory, so this run bounds them
    (`steps_lost_at_most`: each fit in flight at most K, or what it had left); the exact count is
    measured where the kill is at a known step (`tests/test_checkpoints.py`, `checkpoint_resume`)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("platform", "jobs", "serving", "."))
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_jobs_slow", "node-loss", str(tmp_path), "240"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "done" and report["counts"]["done"] == report["fits"] >= 200
    assert report["done_before_kill"] > 0 and report["open_at_kill"] > 0  # the kill really was mid-job
    assert report["finished_fits_trained_again"] == 0  # no training start after the kill for a done fit
    assert report["changed_finished_fits"] == []  # their adapter and finish time are the ones of before
    assert report["adapters_per_fit"] == {"1": report["fits"]}  # every fit recorded exactly once
    assert report["restarts"] >= 1
    k, resumed = report["checkpoint_every"], report["resumed_from_step"]
    assert 0 < len(resumed) <= report["running_at_node_loss"]  # fits in flight, claimed again after it
    assert all(report["steps_at_last_checkpoint"][key] <= step for key, step in resumed.items())
    assert sum(step > 0 for step in resumed.values()) > 0  # the loss really came after checkpoints
    reliability.record(
        "node_loss_training",
        {
            "cluster": "3 one-CPU worker nodes (ray.cluster_utils.Cluster), a 2-worker job",
            "fits": report["fits"],
            "job_status": report["status"],
            "fits_done": report["counts"]["done"],
            "fits_done_before_node_loss": report["done_before_kill"],
            "fits_open_at_node_loss": report["open_at_kill"],
            "fits_recorded_exactly_once": report["adapters_per_fit"].get("1", 0),
            "finished_fits_trained_again": report["finished_fits_trained_again"],
            "training_starts": report["training_starts"],
            "worker_group_restarts": report["restarts"],
            "checkpoint_every": k,
            "steps_per_fit": report["steps_per_fit"],
            "fits_in_flight_at_node_loss": report["running_at_node_loss"],
            "fits_in_flight_claimed_again": len(resumed),
            "fits_resumed_from_a_checkpoint": sum(step > 0 for step in resumed.values()),
            "steps_kept_by_checkpoints": sum(resumed.values()),
            "steps_lost_at_most": sum(min(k, report["steps_per_fit"] - step) for step in resumed.values()),
            "steps_lost_bound": f"<= {k} per fit in flight",
            "steps_lost_without_checkpoints_at_least": sum(resumed.values()),
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def node_loss_scenario(root: Path, n_fits: int = 240) -> dict[str, Any]:
    """3 one-CPU worker nodes, a 2-worker job; kill a node hosting a worker when a sixth of the fits are done
    and a fit in flight has a checkpoint.

    Training starts are counted by the catalog: a worker claims a fit to train it, and every claim adds
    one to the fit's `attempts`. A finished fit trained again would show more attempts after the kill.
    """
    import psutil
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from tests.ray_fixtures import ray_env
    from ulpt.jobs_api import JobsAPI
    from ulpt.jobspec import JobSpec
    from ulpt.models.tiny import build_tiny_model
    from ulpt.sdk import Client

    os.environ.update(ray_env())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    ray.init(address=cluster.address, log_to_driver=False)
    model = build_tiny_model(root / "model", "llama")
    data = write_reviews(root / "reviews.jsonl", users=n_fits)
    steps = 40
    train = {"steps": steps, "checkpoint_every": 10}
    spec = JobSpec.from_dict(
        job_dict(model, data, num_workers=2, fits_per_worker=8, max_failures=3, train=train)
    )
    with Client(home=root / "home", tenant="acme") as client:
        job = JobsAPI(client).submit(spec)
        while job.status().counts["done"] < n_fits // 6 or not running_checkpointed(client, job.id):
            time.sleep(0.2)
        fits = job.fits()
        running_pids = {int(f.worker.split(":")[1]) for f in fits if f.status == "running" and f.worker}
        victim = next(
            node
            for node in nodes
            if running_pids
            & {
                p.pid
                for p in psutil.Process(
                    node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                ).children(recursive=True)
            }
        )
        done_before = {f.key: (f.attempts, f.adapter_id, f.finished_at) for f in fits if f.status == "done"}
        open_at_kill = sum(f.status != "done" for f in fits)
        in_flight = {f.key for f in fits if f.status == "running"}  # Ray Train restarts the whole group
        cluster.remove_node(victim, allow_graceful=False)
        at_checkpoint = checkpointed_steps(client, job.id, in_flight)
        status = job.wait(timeout=600)
        after = {f.key: f for f in job.fits()}
        per_fit: dict[str, int] = {}
        for record in client.adapters.iter(job_id=job.id, limit=500):
            key = (record.training_config or {})["fit_key"]
            per_fit[key] = per_fit.get(key, 0) + 1
        restarts = len({f.worker for f in after.values() if f.worker}) - 2
    ray.shutdown()
    cluster.shutdown()
    counts: dict[str, int] = {}
    for n in per_fit.values():
        counts[str(n)] = counts.get(str(n), 0) + 1
    return {
        "status": status.status,
        "counts": status.counts,
        "fits": len(after),
        "done_before_kill": len(done_before),
        "open_at_kill": open_at_kill,
        "finished_fits_trained_again": sum(
            after[key].attempts > attempts for key, (attempts, _, _) in done_before.items()
        ),
        "changed_finished_fits": [
            key
            for key, (_, adapter_id, finished) in done_before.items()
            if (after[key].adapter_id, after[key].finished_at) != (adapter_id, finished)
        ],
        "training_starts": sum(fit.attempts for fit in after.values()),
        "adapters_per_fit": counts if len(per_fit) == len(after) else {"missing": len(after) - len(per_fit)},
        "restarts": restarts,
        "checkpoint_every": train["checkpoint_every"],
        "steps_per_fit": steps,
        "running_at_node_loss": len(in_flight),
        "steps_at_last_checkpoint": at_checkpoint,
        "resumed_from_step": {
            key: int(after[key].timings.get("resumed_from_step", 0))
            for key in in_flight
            if after[key].attempts > 1
        },
    }


def running_checkpointed(client: Any, job_id: str) -> bool:
    """Whether a fit in flight has a checkpoint yet (a loss before any would only show the old cost)."""
    from ulpt.catalog.jobs import list_fits

    with client.catalog.read() as session:
        return any(f.checkpoint for f in list_fits(session, job_id, status="running"))


def checkpointed_steps(client: Any, job_id: str, keys: set[str]) -> dict[str, int]:
    """Each fit's step in the checkpoint its row names (0 without one), read right after the loss."""
    from ulpt.catalog.jobs import list_fits
    from ulpt.training import checkpoint

    with client.catalog.read() as session:
        named = {f.key: f.checkpoint for f in list_fits(session, job_id) if f.key in keys}
    blobs = {key: checkpoint.decode(client.registry.store.get(key)) for key in set(named.values()) if key}
    return {
        key: max((s.state["step"] for s in blobs[blob][key]), default=0) if blob else 0
        for key, blob in named.items()
    }


if __name__ == "__main__" and sys.argv[1:2] == ["node-loss"]:
    print(json.dumps(node_loss_scenario(Path(sys.argv[2]), *map(int, sys.argv[3:4])), default=str))
