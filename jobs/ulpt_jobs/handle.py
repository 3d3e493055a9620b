"""A job seen from the process that submitted it: its status, its fits, waiting for it, cancelling it.

    jobs = JobsAPI(client)                                   # client: anything with tenant + job_target()
    job = jobs.submit(spec)                                  # validated, recorded, running on Ray
    status = job.wait(progress=True)                         # fits done / total, fits/s, ETA, failures
    jobs.get(job.id).fits()                                  # from any process: state is in the catalog

A job runs in a driver thread of this process by default (it lives as long as the process), or in a
detached driver process (`detach=True`, what `ulpt train` without --wait does) that outlives it.
A driver thread claims the job here, before `submit` or `resume` returns (so of N resumes at once one
wins and the others raise ConflictError); a detached driver claims it when it starts.
With a dashboard URL as the Ray address (`ray_address="http://HEAD:8265"`) the detached driver runs on
the cluster as a Ray job instead (`ulpt_jobs.remote`). Either way a driver that dies can be resumed:
finished fits are never trained again.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ulpt.catalog.jobs import list_jobs
from ulpt.catalog.lifecycle import FitRowState, JobState
from ulpt.catalog.models import utcnow
from ulpt.config import ensure_ray
from ulpt.errors import UlptError
from ulpt.jobspec import JobSpec
from ulpt_jobs.driver import (
    STALE_AFTER_S,
    JobTarget,
    cancel_job,
    check_runnable,
    claim,
    create_job,
    run_job,
)
from ulpt_jobs.plot import plot_curves
from ulpt_jobs.progress import follow
from ulpt_jobs.remote import RemoteRun, is_dashboard_url, submit
from ulpt_jobs.state import FitStatus, JobStatus, fit_statuses, job_status

__all__ = ["JobHandle", "JobOwner", "JobsAPI"]


class JobOwner(Protocol):
    """What the jobs API needs from whoever holds it (`ulpt.Client`, or a detached driver's settings)."""

    @property
    def tenant(self) -> str: ...

    def job_target(self) -> JobTarget:
        """Where the tenant's jobs are recorded and where they run (opened lazily, on first use)."""
        ...


class JobHandle:
    """One job: its status, its fits, waiting for it, cancelling it, plotting its loss curves."""

    def __init__(self, jobs: JobsAPI, job_id: str) -> None:
        self._jobs = jobs
        self.id = job_id
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        """The detached driver's log file, when this handle started one."""
        self.remote: RemoteRun | None = None
        """The Ray job running the driver, when this handle submitted one to a cluster's dashboard URL."""

    def status(self) -> JobStatus:
        """Status, fit counts per status, timings, error; read from the catalog."""
        with self._jobs.target().catalog.read() as session:
            return job_status(session, self.id, self._jobs.tenant)

    def fits(self, status: str | None = None) -> list[FitStatus]:
        """Every fit (or those with `status`): key, status, adapter name:version, metrics or error."""
        self.status()  # tenant check
        with self._jobs.target().catalog.read() as session:
            return fit_statuses(session, self.id, status=status)

    def wait(self, progress: bool = False, timeout: float | None = None, poll_s: float = 1.0) -> JobStatus:
        """Block until the job ends; `progress=True` draws a bar on stderr. Returns the final status.

        Raises the driver's error if the driver of this process failed, and UlptError if a detached
        driver (a local process, or a Ray job on a cluster) stopped without finishing (resume it with
        `client.jobs.resume(id)`).
        """

        def keep_going(status: JobStatus) -> bool:
            if self._thread is not None:
                return self._thread.is_alive()
            if status.finished:
                return False
            if self._process is not None and self._process.poll() is not None:
                raise UlptError(
                    f"the driver of job {self.id} exited ({self._process.returncode}) before the job ended; "
                    f"see {self.log_path}, then `ulpt train --resume {self.id}`"
                )
            ended = self.remote.ended() if self.remote is not None else None
            if ended is not None and self.remote is not None:
                if self.status().finished:  # it ended between the two reads
                    return False
                raise self.remote.failure(self.id, *ended)
            beat = status.heartbeat_at
            if status.status == JobState.RUNNING and beat and _age(beat) > STALE_AFTER_S:
                raise UlptError(
                    f"the driver of job {self.id} stopped (no heartbeat for {_age(beat):.0f} s); "
                    f"resume it with `ulpt train --resume {self.id}`"
                )
            return True

        final = follow(self.status, keep_going=keep_going, progress=progress, poll_s=poll_s, timeout=timeout)
        if self._thread is not None:
            self._thread.join()
            if self._error is not None:
                raise self._error
            final = self.status()
        elif self.remote is not None:
            final = self.status()  # keep_going may have stopped on a newer read than `final`
        return final

    def cancel(self) -> None:
        """Stop the job: workers put unfinished fits back to pending (resume continues them)."""
        self._jobs.cancel(self.id)

    def plot(self, path: str | os.PathLike[str], max_fits: int = 50) -> Path:
        """A PNG of per-fit training loss curves (and held-out loss points)."""
        status = self.status()
        return plot_curves(
            self.fits(status=FitRowState.DONE), Path(path), title=f"job {status.id[:8]}", max_fits=max_fits
        )

    def to_dict(self, *, fits: bool = True, curves: bool = False) -> dict[str, Any]:
        """JSON-ready: the job, its counts and (with fits) every fit's status, adapter and metrics."""
        out = self.status().to_dict()
        if fits:
            out["fits"] = [fit.to_dict(curves=curves) for fit in self.fits()]
        return out

    def _start_thread(self, target: JobTarget, *, resume: bool, force: bool) -> None:
        """Claim the job in the calling thread (a lost claim raises here), then drive it in a new one."""
        ensure_ray(target.ray_address)  # in the calling thread: Ray installs signal handlers
        driver = claim(target.catalog, self.id, resume=resume, force=force)

        def drive() -> None:
            try:
                run_job(target, self.id, driver=driver)
            except BaseException as exc:  # handed to wait(); the job row already says failed
                self._error = exc

        self._thread = threading.Thread(target=drive, name=f"ulpt-job-{self.id[:8]}", daemon=True)
        self._thread.start()

    def _start_process(self, target: JobTarget, *, resume: bool, force: bool) -> None:
        """`python -m ulpt_jobs run ID` in its own session; settings travel in the environment."""
        log_dir = target.home / "jobs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.id}.log"
        env = dict(os.environ, ULPT_CATALOG_URL=target.catalog_url, ULPT_STORE_URL=target.store_url)
        env["ULPT_HOME"] = str(target.home)
        command = [sys.executable, "-m", "ulpt_jobs", "run", self.id, "--tenant", self._jobs.tenant]
        if target.ray_address:
            command += ["--address", target.ray_address]
        if force:
            command.append("--force")
        if not resume:
            command.append("--new")
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"


class JobsAPI:
    """`client.jobs`: submit, resume, list, get and cancel bulk training jobs of the client's tenant."""

    def __init__(self, owner: JobOwner, ray_address: str | None = None) -> None:
        self._owner = owner
        self._ray_address = ray_address

    @property
    def tenant(self) -> str:
        return self._owner.tenant

    def target(self, ray_address: str | None = None) -> JobTarget:
        """The owner's target, on `ray_address`, else this API's, else the owner's, else ULPT_RAY_ADDRESS."""
        target = self._owner.job_target()
        address = (
            ray_address
            or self._ray_address
            or target.ray_address
            or os.environ.get("ULPT_RAY_ADDRESS")
            or None
        )
        return dataclasses.replace(target, ray_address=address)

    def submit(
        self, spec: JobSpec, *, ray_address: str | None = None, detach: bool = False, start: bool = True
    ) -> JobHandle:
        """Validate `spec` against its data and model, record the job, and start it on Ray.

        Every problem with the spec raises SpecError (naming the field) before anything is written.
        `start=False` only records the job (run it later with `resume`). A job with `placement: pool`
        is only recorded: a running pool member for its base model trains it (`ulpt_jobs.pool`).
        """
        if not isinstance(spec, JobSpec):
            raise UlptError(f"train needs a ulpt.JobSpec, got {type(spec).__name__}")
        target = self.target(ray_address)
        job_id, _ = create_job(target, spec, self.tenant)
        handle = JobHandle(self, job_id)
        if start and spec.placement == "dedicated":  # a pooled job is claimed by its pool's members
            self._start(handle, target, detach=detach, resume=False, force=False)
        return handle

    def start(self, job_id: str, *, ray_address: str | None = None, detach: bool = False) -> JobHandle:
        """Start a recorded job no driver has started yet (`submit(start=False)`, a detached driver).

        Only a pending job starts: one cancelled before its driver started stays cancelled (ConflictError).
        """
        handle = self.get(job_id)
        self._start(handle, self.target(ray_address), detach=detach, resume=False, force=False)
        return handle

    def resume(
        self, job_id: str, *, ray_address: str | None = None, detach: bool = False, force: bool = False
    ) -> JobHandle:
        """Continue a job whose driver died, failed or was cancelled: only unfinished fits train.

        Refused while the job's driver still beats (`force` overrides that check), and for every resume
        but one when several race: ConflictError, which the control plane answers with 409.
        """
        handle = self.get(job_id)
        self._start(handle, self.target(ray_address), detach=detach, resume=True, force=force)
        return handle

    def get(self, job_id: str) -> JobHandle:
        handle = JobHandle(self, str(job_id))
        handle.status()  # raises NotFoundError for an unknown or foreign job
        return handle

    def list(self, *, status: str | None = None, limit: int = 50) -> list[JobStatus]:
        """The tenant's jobs, newest first."""
        with self.target().catalog.read() as session:
            return [
                job_status(session, job.id)
                for job in list_jobs(session, self.tenant, status=status, limit=limit)
            ]

    def cancel(self, job_id: str) -> None:
        cancel_job(self.target().catalog, str(job_id), self.tenant)

    def _start(
        self, handle: JobHandle, target: JobTarget, *, detach: bool, resume: bool, force: bool
    ) -> None:
        status = handle.status()  # a quick refusal before Ray starts; the driver's claim decides
        check_runnable(
            status.status, status.heartbeat_at, status.driver, status.id, force=force, resume=resume
        )
        remote = is_dashboard_url(target.ray_address)  # always detached: the driver runs on the cluster
        if not (remote or detach):
            handle._start_thread(target, resume=resume, force=force)
        elif remote:
            handle.remote = submit(target, handle.id, self.tenant, force=force, new=not resume)
        else:
            handle._start_process(target, resume=resume, force=force)


def _age(when: datetime) -> float:
    return (utcnow() - when).total_seconds()
