"""The job driver: validate and record a job, then run it as one Ray Train `DataParallelTrainer`.

`create_job` plans the whole job (data, model, names) before anything is written, so a bad spec
fails with one message and leaves nothing behind; it is the only reader of the job's data, and stores
each fit's rows as a content-addressed blob (`fit_data`) before recording the fits that name them.
`run_job` works the same for a new job, a resumed one (`ulpt train --resume`) and a detached driver:
it claims the job (`claim`: one compare-and-set on the job row, so of two drivers exactly one runs it
and a driver never writes running over a cancel), reconciles the catalog, starts the workers, keeps
its heartbeat in the job row, and records the outcome through its claim.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ulpt.catalog import lifecycle
from ulpt.catalog.db import Catalog
from ulpt.catalog.jobs import add_fits, as_uuid, fit_counts, get_job, list_fits
from ulpt.catalog.jobs import create_job as create_job_row
from ulpt.catalog.lifecycle import JobState
from ulpt.catalog.models import JobRow, utcnow
from ulpt.catalog.pools import POOL_PREFIX
from ulpt.catalog.quotas import check_submission
from ulpt.config import ensure_ray
from ulpt.errors import ConflictError, UlptError, first_line
from ulpt.jobspec import JobSpec
from ulpt.models.precision import planned_dtype
from ulpt.models.shared import put_base_model
from ulpt.store import BlobStore, open_store
from ulpt_jobs import state
from ulpt_jobs.fit_data import missing_fit_data, write_fit_data
from ulpt_jobs.plan import Plan, make_plan
from ulpt_jobs.pool import pool_key_of
from ulpt_jobs.worker import WorkerConfig, train_loop

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0
"""A running job whose heartbeat is older than this has lost its driver and may be resumed."""


@dataclass(frozen=True)
class JobTarget:
    """Where a job's state lives and where it runs: catalog, store, local cache folder, Ray."""

    catalog: Catalog
    catalog_url: str
    store_url: str
    home: Path
    store_options: Mapping[str, Any] = field(default_factory=dict)
    ray_address: str | None = None
    max_pending_fits: int | None = None
    """The operator's default quota of pending fits per tenant (a tenant's own quota overrides it)."""

    def store(self) -> BlobStore:
        return open_store(self.store_url, **self.store_options)


def create_job(target: JobTarget, spec: JobSpec, tenant: str) -> tuple[str, Plan]:
    """Validate `spec` against its data and model, then record the job and its fits (pending) in `tenant`."""
    spec = spec.owned_by(tenant).with_absolute_paths()  # refused before anything is read or recorded
    plan = make_plan(spec, target.home)
    owner = spec.tenant or tenant
    fits, row_steps, default = plan.trainable(), plan.row_steps(), target.max_pending_fits
    with target.catalog.read() as session:  # refused before any blob is written
        check_submission(session, owner, fits=fits, row_steps=row_steps, default_max_pending=default)
    # blobs before rows: a crash in between leaves unreferenced blobs for `ulpt gc`, never a fit without rows
    write_fit_data(target.store(), [(f.train_rows, f.eval_rows) for f in plan.fits if f.error is None])
    with target.catalog.session() as session:
        check_submission(session, owner, fits=fits, row_steps=row_steps, default_max_pending=default)
        pool = pool_key_of(spec).name if spec.placement == "pool" else None  # a pool, not a driver, trains it
        job = create_job_row(session, owner, spec.to_dict(), name=spec.job_name, driver=pool)
        add_fits(session, job.id, ((fit.key, fit.record()) for fit in plan.fits))  # records made lazily
        state.fail_fits(session, job.id, {fit.key: fit.error for fit in plan.fits if fit.error})
        job_id = str(job.id)
    return job_id, plan


def claim(catalog: Catalog, job_id: str, *, resume: bool = True, force: bool = False) -> str:
    """Make a new driver the job's only one (one compare-and-set UPDATE); its name, for `run_job`.

    A new job's driver (`resume=False`) claims only a pending job, so a cancel that came first wins.
    A resume claims a pending, failed or cancelled job, or a running one whose driver's heartbeat is
    older than STALE_AFTER_S (any running one with `force`). Of N claims at once exactly one wins; the
    others get a ConflictError saying why (the control plane answers 409).
    """
    driver = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    stale_before = None if force else utcnow() - timedelta(seconds=STALE_AFTER_S)
    only = lifecycle.RESUMABLE if resume else lifecycle.NEW_JOB
    with catalog.session() as session:
        job_uuid = as_uuid(job_id)
        if (pooled := get_job(session, job_uuid).driver or "").startswith(POOL_PREFIX):
            check_runnable(JobState.PENDING, None, pooled, job_id)  # refused before it claims the job
        if lifecycle.claim_job(session, job_uuid, driver, only=only, stale_before=stale_before):
            return driver
        job = get_job(session, job_uuid)
        check_runnable(job.status, job.heartbeat_at, job.driver, job_id, force=force, resume=resume)
        raise ConflictError(f"job {job_id} was claimed by another driver first")


def run_job(
    target: JobTarget, job_id: str, *, force: bool = False, resume: bool = True, driver: str | None = None
) -> state.JobStatus:
    """Train every unfinished fit of the job on Ray and record the outcome; returns the final status.

    `driver` is the name `claim` returned when the caller claimed the job already; without it this
    claims the job itself (`resume` and `force` as for `claim`). A job that was cancelled after the
    claim and before this driver started is left cancelled, with no worker started.
    """
    started = time.monotonic()
    driver = driver or claim(target.catalog, job_id, resume=resume, force=force)
    with target.catalog.session() as session:
        if not lifecycle.beat(session, as_uuid(job_id), driver):  # cancelled (or taken over) meanwhile
            return state.job_status(session, job_id)
        job = get_job(session, job_id)
        spec, attempt = JobSpec.from_dict(job.spec), job.attempt
        recovered = state.reconcile(session, job_id)
    timings: dict[str, Any] = {"recovered_fits": recovered["recovered"]}
    error: str | None = None
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(target.catalog, job_id, driver, stop), daemon=True)
    beat.start()
    try:
        if recovered["open"]:  # otherwise every fit already ended: no workers needed
            restore_fit_data(target, job_id, spec)
            timings["ray_start_s"] = round(ensure_ray(target.ray_address), 3)
            shared_at = time.monotonic()
            weights = share_weights(spec)
            timings["share_weights_s"] = round(time.monotonic() - shared_at, 3)
            with target.catalog.read() as session:  # cancelled while Ray started: no workers to start
                stopped = state.job_is_stopped(session, job_id, driver)
            if not stopped:
                fit_started, fit_started_at = time.monotonic(), time.time()
                result = _trainer(target, job_id, spec, attempt, driver, weights).fit()
                timings["train_s"] = round(time.monotonic() - fit_started, 3)
                timings.update(_fixed_costs(target.catalog, job_id, fit_started_at, time.time()))
                if result.error is not None:
                    error = (
                        f"Ray Train failed after {spec.max_failures} restart(s): {_error_line(result.error)}"
                    )
    except BaseException as exc:
        error = f"driver stopped: {_error_line(exc)}"
        raise
    finally:
        stop.set()
        beat.join()
        timings["driver_s"] = round(time.monotonic() - started, 3)
        _finish(target.catalog, job_id, driver, error, timings)
    with target.catalog.read() as session:
        return state.job_status(session, job_id)


def _fixed_costs(catalog: Catalog, job_id: str, started_at: float, ended_at: float) -> dict[str, float]:
    """Where `train_s` went besides training, from rank 0's clock readings (one machine, or synced clocks).

    workers_start_s: `fit()` called -> the worker entered its loop (Ray Train's controller, the worker
    actor's process and its imports); worker_setup_s: -> ready to claim (catalog, base model, barrier);
    trainer_stop_s: the worker returned -> `fit()` returned (Ray Train's shutdown).
    """
    with catalog.read() as session:
        seen = dict(get_job(session, job_id).timings or {})
    stamps = [seen.get(f"worker_{k}_at") for k in ("entered", "ready", "exited")]
    if not all(isinstance(t, (int, float)) and started_at <= t <= ended_at for t in stamps):
        return {}  # a restarted group, or a worker that never finished: nothing to account for
    entered, ready, exited = (float(t) for t in stamps)  # type: ignore[arg-type]  # checked just above
    return {
        "workers_start_s": round(entered - started_at, 3),
        "worker_setup_s": round(ready - entered, 3),
        "trainer_stop_s": round(ended_at - exited, 3),
    }


def restore_fit_data(target: JobTarget, job_id: str, spec: JobSpec) -> int:
    """Write the data blobs that pending fits lack (a job recorded before fits had them); returns how many.

    Normally none is missing and the data is not read. Otherwise the job is planned again from its
    source files, and only rows whose fingerprint still matches the fit's row are stored: a fit whose
    rows changed keeps lacking its blob and fails alone in the worker.
    """
    store = target.store()
    with target.catalog.read() as session:
        pending = list_fits(session, job_id, status="pending")
        wanted = [(fit.spec or {}).get("dataset_fingerprint") for fit in pending]
    missing = missing_fit_data(store, [fp for fp in wanted if fp])
    if not missing:
        return 0
    try:
        plan = make_plan(spec, target.home)
    except UlptError as exc:  # the sources are gone too: those fits fail alone, naming the missing blob
        log.warning("job %s: cannot re-read the data of %d fit(s): %s", job_id, len(missing), exc)
        return 0
    return write_fit_data(store, [(f.train_rows, f.eval_rows) for f in plan.fits if f.fingerprint in missing])


def check_runnable(
    status: str,
    heartbeat_at: datetime | None,
    driver: str | None,
    job_id: str,
    *,
    force: bool = False,
    resume: bool = True,
) -> None:
    """Refuse, in one line, what `claim` would refuse: a job a trainer pool trains; a done job; a new
    job's driver for a job that is no longer pending (cancelled before it started); a running job whose
    driver beats (unless `force`)."""
    if driver is not None and driver.startswith(POOL_PREFIX):
        raise ConflictError(f"job {job_id} is trained by a trainer pool: no driver starts or resumes it")
    if status == JobState.DONE:
        raise ConflictError(f"job {job_id} is already done; nothing to resume")
    if not resume and status != JobState.PENDING:
        raise ConflictError(
            f"job {job_id} is {status}, so its driver does not start it; "
            f"`ulpt train --resume {job_id}` trains its unfinished fits"
        )
    if status == JobState.RUNNING and not force and heartbeat_at is not None:
        age = (utcnow() - heartbeat_at).total_seconds()
        if age < STALE_AFTER_S:
            raise ConflictError(
                f"job {job_id} is running (its driver's heartbeat was {age:.0f} s ago); "
                "cancel it first, or use --force (force=True) if that driver is gone"
            )


def _finish(catalog: Catalog, job_id: str, driver: str, error: str | None, timings: dict[str, Any]) -> None:
    """Record the outcome through the driver's claim: derived from the fits (`lifecycle.job_outcome`).

    A job that is no longer running (cancelled by a user, failed by a worker) keeps its status and
    reason; one another driver took over is that driver's to record, timings included.
    """
    with catalog.session() as session:
        job = get_job(session, job_id)
        if job.driver != driver:
            return
        state.update_timings(session, job_id, **timings)
        to, error = lifecycle.job_outcome(fit_counts(session, job_id), error)
        mine = [JobRow.driver == driver]
        lifecycle.move_job(session, job.id, to, only=[JobState.RUNNING], where=mine, error=error)


def cancel_job(catalog: Catalog, job_id: str, tenant: str | None = None) -> None:
    """Ask the workers to stop: they put their unfinished fits back to pending and exit.

    One compare-and-set: a job that ended meanwhile keeps its end (409), and no driver claims or
    finishes over a cancel. Workers obey within `worker.STOP_CHECK_S` plus one pack step and its
    checkpoint; no fit is claimed after the cancel commits.
    """
    with catalog.session() as session:
        job = get_job(session, job_id, tenant)
        if not lifecycle.move_job(session, job.id, JobState.CANCELLED, error="cancelled"):
            now = session.scalar(select(JobRow.status).where(JobRow.id == job.id))
            raise ConflictError(f"job {job_id} is already {now}")


def share_weights(spec: JobSpec) -> Any | None:
    """The base model in Ray's object store for the workers (a reference the driver keeps), or None.

    One worker gains nothing from sharing, so it loads from disk as before; nor do GPU workers, which
    load each tensor straight to their device (`device_map`) and keep no host copy: packing the model
    into the driver's memory and the head's object store would cost about twice the model there for
    nothing.
    """
    if spec.num_workers < 2 or spec.use_gpu:
        return None
    return put_base_model(spec.base_model, planned_dtype(spec.dtype, spec.use_gpu))


def _trainer(
    target: JobTarget, job_id: str, spec: JobSpec, attempt: int, driver: str, weights: Any | None = None
) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    config = WorkerConfig(
        job_id=job_id,
        driver=driver,
        catalog_url=target.catalog_url,
        store_url=target.store_url,
        store_options=dict(target.store_options),
        threads=spec.cpus_per_worker,
        shared_weights=weights,
    )
    resources = {"CPU": spec.cpus_per_worker} | ({"GPU": spec.gpus_per_worker} if spec.use_gpu else {})
    # Not TorchTrainer: its torch.distributed process group, set up and torn down with every job (3 s
    # of an idle 2-CPU machine, 13-15 s of a busy one), would serve one barrier; workers train their
    # own fits and meet only in the catalog, and `ray.train.collective.barrier` needs no group.
    return DataParallelTrainer(
        train_loop,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(  # type: ignore[call-arg]  # mypy sees Train V1's RunConfig
            name=f"ulpt-{job_id}-{attempt}",
            storage_path=str(target.home / "ray_results"),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )


def _worker_env() -> dict[str, str]:
    """Import paths for workers when ulpt runs from a source tree (not installed), made absolute."""
    import ulpt
    import ulpt_jobs

    roots = [str(Path(p).parent.resolve()) for p in (*ulpt.__path__, *ulpt_jobs.__path__)]
    extra = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(roots + extra))}


def _heartbeat(catalog: Catalog, job_id: str, driver: str, stop: threading.Event) -> None:
    """Renew the driver's heartbeat until it stops (a job no longer its own is simply not renewed)."""
    while not stop.wait(HEARTBEAT_S):
        try:
            with catalog.session() as session:
                lifecycle.beat(session, as_uuid(job_id), driver)
        except UlptError as exc:  # a catalog hiccup must not kill the driver; the next beat retries
            print(f"ulpt: heartbeat failed: {exc}", file=sys.stderr)


def _error_line(exc: BaseException) -> str:
    """The error's type and first line: a driver's error names what failed (`OSError: ...`)."""
    text = first_line(exc)
    return type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"
