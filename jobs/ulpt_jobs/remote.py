"""Remote submission: run a recorded job on a Ray cluster through its Job Submission API.

When the Ray address is the dashboard's http(s):// URL (`ulpt train --address http://HEAD:8265`), the
submitter records the job in the catalog as usual, then asks the cluster to run the detached driver
(`python -m ulpt_jobs run JOB_ID`) there. The driver needs only what the environment carries (catalog
and store URLs, S3 credentials), so nothing but a runtime env of environment variables is shipped: the
cluster's image has ulpt installed. Progress is still read from the catalog; the Ray job's status is
only checked to report a driver that never started or died.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ulpt.errors import UlptError, first_line
from ulpt_jobs import state

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from ulpt_jobs.driver import JobTarget

CARRIED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "ULPT_HOME",
)
"""Taken from the submitter's environment when set. ULPT_HOME only when set explicitly: a default
home (./.ulpt of the submitter's working directory) means nothing on the cluster, whose image sets its own."""

AGENT_WAIT_S = 60.0
"""How long to retry a submission refused because the head's job agent is not up yet."""

_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def is_dashboard_url(address: str | None) -> bool:
    """Whether `address` names a Ray dashboard (Job Submission API) rather than a GCS or ray:// address."""
    return bool(address) and str(address).lower().startswith(("http://", "https://"))


def job_env(target: JobTarget) -> dict[str, str]:
    """The driver's environment on the cluster: catalog, store, S3 settings. Secrets: never log it."""
    env = {"ULPT_CATALOG_URL": target.catalog_url, "ULPT_STORE_URL": target.store_url}
    env.update({name: os.environ[name] for name in CARRIED_ENV if os.environ.get(name)})
    return env


def entrypoint(job_id: str, tenant: str, force: bool = False, new: bool = False) -> str:
    """The shell command the cluster runs: the detached driver, joining the cluster it runs in
    (`--new`: the driver of a new submission, which starts the job only while it is still pending)."""
    command = ["python", "-m", "ulpt_jobs", "run", job_id, "--tenant", tenant, "--address", "auto"]
    return shlex.join(command + (["--force"] if force else []) + (["--new"] if new else []))


@dataclass
class RemoteRun:
    """A job's driver running as a Ray job on a cluster: where, and under which submission id."""

    address: str
    submission_id: str
    _client: JobSubmissionClient | None = field(default=None, repr=False, compare=False)

    def client(self) -> JobSubmissionClient:
        """One client per run: making one is an HTTP round trip (version check)."""
        if self._client is None:
            self._client = _client(self.address)
        return self._client

    def ended(self) -> tuple[str, str] | None:
        """(Ray status, one-line reason) once the Ray job has ended; None while it runs or is pending."""
        try:
            info = self.client().get_job_info(self.submission_id)
        except Exception as exc:  # the dashboard may restart; the catalog heartbeat still guards the job
            if "does not exist" in str(exc):
                return "MISSING", f"the cluster has no Ray job {self.submission_id}"
            return None
        status = str(getattr(info.status, "value", info.status))
        if status not in _ENDED:
            return None
        return status, _one_line(info.message or "", self._log_tail())

    def failure(self, job_id: str, status: str, reason: str) -> UlptError:
        """The one-line error for a Ray job that ended before the catalog says the job did."""
        return UlptError(
            f"the driver of job {job_id} (Ray job {self.submission_id} at {self.address}) ended {status} "
            f"before the job did{': ' + reason if reason else ''}; "
            f"resume it with `ulpt train --resume {job_id} --address {self.address}`"
        )

    def _log_tail(self) -> str:
        try:
            logs = self.client().get_job_logs(self.submission_id)
        except Exception:  # logs are a courtesy; the status alone is enough to report
            return ""
        lines = [line.strip() for line in logs.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def submit(
    target: JobTarget, job_id: str, tenant: str, *, force: bool = False, new: bool = False
) -> RemoteRun:
    """Record a fresh submission id on the job (in its timings), then submit its driver to the cluster.

    The id is written before submitting so that the driver's own timing updates keep it. A failed
    submission leaves the job as it was (pending or resumable) and raises one line.
    """
    address = str(target.ray_address).rstrip("/")
    run = RemoteRun(address=address, submission_id=f"ulpt-{job_id}-{secrets.token_hex(3)}")
    with target.catalog.session() as session:
        state.update_timings(session, job_id, ray_submission_id=run.submission_id, ray_dashboard=address)
    client = run.client()
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client.submit_job(
                entrypoint=entrypoint(job_id, tenant, force, new),
                submission_id=run.submission_id,
                runtime_env={"env_vars": job_env(target)},
                metadata={"ulpt_job_id": job_id, "tenant": tenant},
            )
            return run
        except Exception as exc:  # connection refused, auth, version mismatch: one line, no traceback
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(1.0)  # a head that just started: its job agent comes up a few seconds later
                continue
            error = exc
            break
    raise UlptError(
        f"could not submit job {job_id} to the Ray cluster at {address}: {first_line(error)}; "
        f"retry with `ulpt train --resume {job_id} --address {address}`"
    ) from None


def _client(address: str) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise UlptError(f"no Ray Job Submission API at {address}: {first_line(exc)}") from None


def _one_line(*parts: Any) -> str:
    text = "; ".join(first_line(p) for p in parts if str(p).strip())
    return text if len(text) <= 400 else text[:397] + "..."
