"""Remote submission against a real `ray start --head` cluster on 127.0.0.1, reached only over HTTP.

The test process never joins this cluster (it may already host the session's local Ray): it records
the job and talks to the dashboard's Job Submission API, and the driver runs on the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.test_jobs_ray import run_cli
from tests.test_jobs_spec import job_dict, review_rows, write_jsonl
from ulpt.errors import UlptError
from ulpt.jobspec import JobSpec
from ulpt.models.tiny import build_tiny_model
from ulpt.sdk import Client
from ulpt_jobs import remote

BIN = Path(sys.executable).parent
USERS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real head with its dashboard on free loopback ports; yields the dashboard URL, stops it after.

    `ray start --head --block` runs in its own process group, and stopping kills that group only:
    `ray stop` would kill every Ray on the machine by name (the session's own Ray included).
    """
    from ray.job_submission import JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TMPDIR=temp_dir,
        HF_HUB_OFFLINE="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the entrypoint's `python` is this venv's
    )
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={_free_port()}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        *(  # fixed defaults (52365 for the job agent...) would clash with another Ray on this machine
            f"--{name}-port={_free_port()}"
            for name in (
                "ray-client-server",
                "dashboard-agent-listen",
                "dashboard-agent-grpc",
                "metrics-export",
                "runtime-env-agent",
            )
        ),
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    url = f"http://127.0.0.1:{dashboard}"
    log_path = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:  # the job API answers some seconds after the head starts
            assert head.poll() is None, log_path.read_text()
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(1)
        yield url
    finally:
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM the head's process group (ours alone), then SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + grace
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=grace)
        while time.monotonic() < deadline:
            try:
                os.killpg(head.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture()
def remote_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A tiny job spec and an environment whose settings the driver on the cluster must receive."""
    model = build_tiny_model(tmp_path / "model", "llama")
    data = write_jsonl(tmp_path / "reviews.jsonl", [r for u in range(USERS) for r in review_rows(u, 6, 0)])
    spec = job_dict(model, data, train={"steps": 4}, num_workers=1)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    monkeypatch.setenv("ULPT_HOME", str(home))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "carried-key-id")
    for name in ("ULPT_CATALOG_URL", "ULPT_STORE_URL", "ULPT_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return {"spec": tmp_path / "job.yaml", "home": home}


def test_dashboard_urls_are_told_from_other_addresses() -> None:
    assert remote.is_dashboard_url("http://127.0.0.1:8265")
    assert remote.is_dashboard_url("HTTPS://ray.example:443/")
    for address in (None, "", "auto", "127.0.0.1:6379", "ray://head:10001"):
        assert not remote.is_dashboard_url(address)
    assert remote.entrypoint("j1", "acme", force=True) == (
        "python -m ulpt_jobs run j1 --tenant acme --address auto --force"
    )


def test_ulpt_train_with_a_dashboard_url_trains_on_the_cluster(
    ray_head: str, remote_job: dict[str, Path]
) -> None:
    from ray.job_submission import JobSubmissionClient

    result = run_cli("train", str(remote_job["spec"]), "--address", ray_head, "--wait", "--json")
    out = json.loads(result.stdout)
    assert result.exit_code == 0, result.stdout
    assert out["status"] == "done" and out["counts"]["done"] == USERS, out
    submission_id = out["timings"]["ray_submission_id"]
    assert out["timings"]["ray_dashboard"] == ray_head
    assert "carried-key-id" not in result.stdout  # carried to the cluster, never printed

    ray_jobs = JobSubmissionClient(ray_head)
    deadline = time.monotonic() + 60
    while (ended := remote.RemoteRun(ray_head, submission_id).ended()) is None:  # the driver exits after
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert ended[0] == "SUCCEEDED", ended
    info = ray_jobs.get_job_info(submission_id)
    assert (info.metadata or {})["ulpt_job_id"] == out["id"]
    env = (info.runtime_env or {}).get("env_vars", {})
    assert env["AWS_ACCESS_KEY_ID"] == "carried-key-id" and env["ULPT_HOME"] == str(remote_job["home"])
    assert env["ULPT_CATALOG_URL"].startswith("sqlite:///")

    with Client(tenant="acme") as client:  # the catalog and store of ULPT_HOME, as the driver saw them
        records = client.adapters.find(tags={"project": "demo"}).items
        assert sorted(r.name for r in records) == [f"user-{u}" for u in range(USERS)]
        assert all(r.job_id == out["id"] for r in records)
        assert records[0].load().num_trainable_params > 0


def test_a_driver_that_dies_on_the_cluster_is_one_line_error(
    ray_head: str, remote_job: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        remote, "entrypoint", lambda *_a, **_k: "python -c \"print('driver boom'); raise SystemExit(3)\""
    )
    with Client(tenant="acme") as client:
        job = client.train(JobSpec.from_yaml(remote_job["spec"]), ray_address=ray_head)
        assert job.remote is not None and job.status().status == "pending"
        with pytest.raises(UlptError) as raised:
            job.wait(timeout=120, poll_s=0.5)
    message = str(raised.value)
    assert "\n" not in message and "FAILED" in message and "driver boom" in message
    assert f"--resume {job.id} --address {ray_head}" in message
