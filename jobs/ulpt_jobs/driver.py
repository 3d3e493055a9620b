"""The job driver: validate and record a job, then run it as one Ray Train `DataParallelTrainer`.

`create_job` plans the whole job (data, model, names) before anything is written, so a bad spec
fails with one message and leaves nothing behind; it is the only reader of the job's data, and stores
each fit's rows as a content-addressed blob (`fit_data`) before recording the fits that name them.
`run_job` works the same for a new job, a resumed one (`ulpt train --resume`) and a detached driver:
it reconciles the catalog, starts the workers, keeps a heartbeat in the job row (so a second driver
refuses to run the same job), and records the outcome.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ulpt.catalog.db import Catalog
from ulpt.catalog.jobs import add_fits, fit_counts, get_job, list_fits, set_job_status
from ulpt.catalog.jobs import create_job as create_job_row
from ulpt.config import ensure_ray
from ulpt.errors import ConflictError, UlptError, first_line
from ulpt.jobspec import JobSpec
from ulpt.models.shared import put_base_model
from ulpt.store import BlobStore, open_store
from ulpt_jobs import state
from ulpt_jobs.fit_data import missing_fit_data, write_fit_data
from ulpt_jobs.plan import Plan, make_plan
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

    def store(self) -> BlobStore:
        return open_store(self.store_url, **self.store_options)


def create_job(target: JobTarget, spec: JobSpec, tenant: str) -> tuple[str, Plan]:
    """Validate `spec` against its data and model, then record the job and its fits (pending) in `tenant`."""
    spec = spec.owned_by(tenant).with_absolute_paths()  # refused before anything is read or recorded
    plan = make_plan(spec, target.home)
    # blobs before rows: a crash in between leaves unreferenced blobs for `ulpt gc`, never a fit without rows
    write_fit_data(target.store(), [(f.train_rows, f.eval_rows) for f in plan.fits if f.error is None])
    with target.catalog.session() as session:
        job = create_job_row(session, spec.tenant or tenant, spec.to_dict(), name=spec.job_name)
        add_fits(session, job.id, ((fit.key, fit.record()) for fit in plan.fits))  # records made lazily
        state.fail_fits(session, job.id, {fit.key: fit.error for fit in plan.fits if fit.error})
        job_id = str(job.id)
    return job_id, plan


def run_job(target: JobTarget, job_id: str, *, force: bool = False) -> state.JobStatus:
    """Train every unfinished fit of the job on Ray and record the outcome; returns the final status."""
    started = time.monotonic()
    with target.catalog.session() as session:
        job = get_job(session, job_id)
        check_runnable(job.status, dict(job.timings or {}), job_id, force)
        spec = JobSpec.from_dict(job.spec)
        recovered = state.reconcile(session, job_id)
        set_job_status(session, job_id, "running")
        attempt = int((job.timings or {}).get("attempt", 0)) + 1
        state.update_timings(session, job_id, attempt=attempt, driver=_driver_name(), heartbeat=_now())
    timings: dict[str, Any] = {"recovered_fits": recovered["recovered"]}
    error: str | None = None
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(target.catalog, job_id, stop), daemon=True)
    beat.start()
    try:
        if recovered["open"]:  # otherwise every fit already ended: no workers needed
            restore_fit_data(target, job_id, spec)
            timings["ray_start_s"] = round(ensure_ray(target.ray_address), 3)
            shared_at = time.monotonic()
            weights = share_weights(spec)
            timings["share_weights_s"] = round(time.monotonic() - shared_at, 3)
            fit_started, fit_started_at = time.monotonic(), time.time()
            result = _trainer(target, job_id, spec, attempt, weights).fit()
            timings["train_s"] = round(time.monotonic() - fit_started, 3)
            timings.update(_fixed_costs(target.catalog, job_id, fit_started_at, time.time()))
            if result.error is not None:
                error = f"Ray Train failed after {spec.max_failures} restart(s): {_error_line(result.error)}"
    except BaseException as exc:
        error = f"driver stopped: {_error_line(exc)}"
        raise
    finally:
        stop.set()
        beat.join()
        timings["driver_s"] = round(time.monotonic() - started, 3)
        _finish(target.catalog, job_id, error, timings)
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


def check_runnable(status: str, timings: dict[str, Any], job_id: str, force: bool) -> None:
    """Refuse a done job, and a running one whose driver still beats (unless `force`)."""
    if status == "done":
        raise ConflictError(f"job {job_id} is already done; nothing to resume")
    if status == "running" and not force:
        beat = timings.get("heartbeat")
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(beat)).total_seconds() if beat else None
        if age is not None and age < STALE_AFTER_S:
            raise ConflictError(
                f"job {job_id} is running (driver {timings.get('driver')}, heartbeat {age:.0f} s ago); "
                "cancel it first, or use --force (force=True) if that driver is gone"
            )


def _finish(catalog: Catalog, job_id: str, error: str | None, timings: dict[str, Any]) -> None:
    """Record the outcome: done when every fit ended (some may have failed alone), else failed/cancelled."""
    with catalog.session() as session:
        job = get_job(session, job_id)
        counts = fit_counts(session, job_id)
        state.update_timings(session, job_id, **timings, heartbeat=None)
        if job.status != "running":  # cancelled by a user, or failed by a worker: keep its reason
            return
        open_fits = counts["pending"] + counts["running"]
        if error is None and open_fits:
            error = f"{open_fits} fit(s) did not finish"
        if error is None and counts["done"] == 0 and counts["failed"]:
            error = f"all {counts['failed']} fit(s) failed"
        elif error is None and counts["failed"]:
            set_job_status(session, job_id, "done", error=f"{counts['failed']} of {job.n_fits} fit(s) failed")
            return
        set_job_status(session, job_id, "failed" if error else "done", error=error)


def cancel_job(catalog: Catalog, job_id: str, tenant: str | None = None) -> None:
    """Ask the workers to stop: they put their unfinished fits back to pending and exit."""
    with catalog.session() as session:
        job = get_job(session, job_id, tenant)
        if job.status in state.TERMINAL:
            raise ConflictError(f"job {job_id} is already {job.status}")
        set_job_status(session, job_id, "cancelled", error="cancelled")


def share_weights(spec: JobSpec) -> Any | None:
    """The base model in Ray's object store for the workers (a reference the driver keeps), or None.

    One worker gains nothing from sharing, so it loads from disk as before; nor do GPU workers, which
    load each tensor straight to their device (`device_map`) and keep no host copy: packing the model
    into the driver's memory and the head's object store would cost about twice the model there for
    nothing.
    """
    if spec.num_workers < 2 or spec.use_gpu:
        return None
    return put_base_model(spec.base_model, "float32" if spec.dtype == "auto" else spec.dtype)


def _trainer(target: JobTarget, job_id: str, spec: JobSpec, attempt: int, weights: Any | None = None) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    config = WorkerConfig(
        job_id=job_id,
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


def _heartbeat(catalog: Catalog, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            with catalog.session() as session:
                state.update_timings(session, job_id, heartbeat=_now())
        except UlptError as exc:  # a catalog hiccup must not kill the driver; the next beat retries
            print(f"ulpt: heartbeat failed: {exc}", file=sys.stderr)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _driver_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _error_line(exc: BaseException) -> str:
    """The error's type and first line: a driver's error names what failed (`OSError: ...`)."""
    text = first_line(exc)
    return type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"
