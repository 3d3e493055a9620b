"""A job's durable state in the catalog, beyond the generic queries of `ulpt.catalog.jobs`.

The commit point of a fit is its adapter row (registered with the job id and the fit key in its
`training_config`); the fit row is marked done right after. `reconcile` closes the gap a crash
between the two leaves, so a fit whose adapter exists is never trained again, and puts fits whose
worker died back to pending. Progress is read from here too: no `ray.train.report` barrier needed.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ulpt.catalog.jobs import (
    as_uuid,
    fail_exhausted,
    fit_counts,
    get_job,
    requeue_running,
    verdict_counts,
)
from ulpt.catalog.lifecycle import FIT_TERMINAL, JOB_TERMINAL, FitRowState, JobState, fit_state, move_fits
from ulpt.catalog.models import AdapterRow, FitRow, JobRow
from ulpt.catalog.names import check_json
from ulpt.jobspec import max_attempts_of

FIT_KEY = "fit_key"
"""The entry of an adapter's `training_config` that names the fit it came from."""


@dataclass(frozen=True)
class JobStatus:
    """A job as `ulpt jobs show` and `client.jobs.get(id).status()` see it."""

    id: str
    tenant: str
    name: str | None
    status: JobState
    n_fits: int
    counts: dict[str, int]
    error: str | None
    timings: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]
    verdicts: dict[str, int] = field(default_factory=dict)
    """{"evaluated": done fits with a verdict, "learned": those that beat zero-shot on held-out rows}."""
    driver: str | None = None
    """The process that claimed the job last (host:pid:token)."""
    heartbeat_at: datetime | None = None
    """Its driver's last heartbeat while the job runs; None once it ended."""
    attempt: int = 0
    """How many drivers claimed the job (1 for a job that ran once; a resume adds one)."""

    @property
    def finished(self) -> bool:
        return self.status in JOB_TERMINAL

    def to_dict(self, *, spec: bool = False) -> dict[str, Any]:
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name != "spec"}
        if spec:
            out["spec"] = self.spec
        return out


@dataclass(frozen=True)
class FitStatus:
    """One fit of a job: its status, adapter (name:version) and metrics, or its error."""

    key: str
    status: FitRowState
    name: str | None
    adapter: str | None
    adapter_id: str | None
    attempts: int
    worker: str | None
    error: str | None
    metrics: dict[str, Any]
    timings: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}
        if not curves:
            out["metrics"] = summary_metrics(self.metrics)
        return out


def job_status(session: Session, job_id: uuid.UUID | str, tenant: str | None = None) -> JobStatus:
    job = get_job(session, job_id, tenant)
    return _status_of(job, fit_counts(session, job.id), verdict_counts(session, job.id))


def _status_of(job: JobRow, counts: dict[str, int], verdicts: dict[str, int] | None = None) -> JobStatus:
    return JobStatus(
        id=str(job.id),
        tenant=job.tenant,
        name=job.name,
        status=JobState(job.status),
        n_fits=job.n_fits,
        counts=counts,
        error=job.error,
        timings=dict(job.timings or {}),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        spec=dict(job.spec or {}),
        verdicts=verdicts or {},
        driver=job.driver,
        heartbeat_at=job.heartbeat_at,
        attempt=job.attempt,
    )


def fit_statuses(session: Session, job_id: uuid.UUID | str, *, status: str | None = None) -> list[FitStatus]:
    """Every fit of the job in creation order, with its adapter's `name:version` when it has one."""
    stmt = (
        select(FitRow, AdapterRow.name, AdapterRow.version)
        .outerjoin(AdapterRow, AdapterRow.id == FitRow.adapter_id)
        .where(FitRow.job_id == as_uuid(job_id))
        .order_by(FitRow.id)
    )
    if status is not None:
        stmt = stmt.where(FitRow.status == fit_state(status).value)
    out = []
    for fit, name, version in session.execute(stmt):
        out.append(
            FitStatus(
                key=fit.key,
                status=FitRowState(fit.status),
                name=(fit.spec or {}).get("name"),
                adapter=f"{name}:{version}" if name is not None else None,
                adapter_id=str(fit.adapter_id) if fit.adapter_id else None,
                attempts=fit.attempts,
                worker=fit.worker,
                error=fit.error,
                metrics=dict(fit.metrics or {}),
                timings=dict(fit.timings or {}),
                started_at=fit.started_at,
                finished_at=fit.finished_at,
            )
        )
    return out


def fail_fits(session: Session, job_id: uuid.UUID | str, errors: Mapping[str, str]) -> None:
    """Mark fits failed by key (fits the plan already knows cannot run)."""
    job = as_uuid(job_id)
    for key, error in errors.items():
        move_fits(session, FitRowState.FAILED, FitRow.job_id == job, FitRow.key == key, error=error)


def reconcile(session: Session, job_id: uuid.UUID | str) -> dict[str, int]:
    """Before (re)starting workers: fits whose adapter is registered become done, running ones pending.

    Only call it when no worker of the job is alive (job start, worker-group restart, resume). A
    running fit that has been claimed `train.max_attempts` times took its worker down on each: it is
    failed instead of requeued, so one bad fit cannot use up the job's restarts.
    """
    job = as_uuid(job_id)
    spec = get_job(session, job).spec or {}
    max_attempts = max_attempts_of(spec)
    open_fits = {
        key: fit_id
        for key, fit_id in session.execute(
            select(FitRow.key, FitRow.id).where(
                FitRow.job_id == job, FitRow.status.not_in([s.value for s in FIT_TERMINAL])
            )
        )
    }
    recovered = 0
    if open_fits:
        registered = session.execute(
            select(AdapterRow.id, AdapterRow.training_config, AdapterRow.metrics).where(
                AdapterRow.job_id == job
            )
        )
        for adapter_id, config, metrics in registered.all():
            fit_id = open_fits.get(str((config or {}).get(FIT_KEY)))
            if fit_id is not None:
                recovered += move_fits(
                    session,
                    FitRowState.DONE,
                    FitRow.id == fit_id,
                    adapter_id=adapter_id,
                    error=None,
                    metrics=dict(metrics or {}),
                )
    exhausted = fail_exhausted(session, job, max_attempts)
    requeued = requeue_running(session, job)
    return {
        "recovered": recovered,
        "exhausted": exhausted,
        "requeued": requeued,
        "open": len(open_fits) - recovered - exhausted,
    }


def update_timings(session: Session, job_id: uuid.UUID | str, **values: Any) -> None:
    """Merge values (durations, worker clock stamps, the Ray submission) into the job's timings."""
    job = get_job(session, job_id)
    job.timings = check_json({**(job.timings or {}), **values}, "job timings")
    session.flush()


def job_is_stopped(session: Session, job_id: uuid.UUID | str, driver: str | None = None) -> bool:
    """Whether workers should stop: the job ended (cancelled, or failed: e.g. its base model changed),
    or, for the workers of `driver`, another driver took it over (a resume after a cancel, --force)."""
    row = session.execute(select(JobRow.status, JobRow.driver).where(JobRow.id == as_uuid(job_id))).first()
    if row is None:
        return True
    status, current = row
    return status in JOB_TERMINAL or (driver is not None and current != driver)


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar metrics (no curves, no eval history)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finite_json(value: Any) -> Any:
    """JSON has no NaN or infinity: such values become null in recorded metrics."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value
