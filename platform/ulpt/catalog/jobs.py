"""Jobs and fits: the durable state that lets a bulk training job resume after any worker dies.

Deliberately generic (the training driver owns the meaning of a spec): create a job, add its fits in
bulk, let workers claim pending fits atomically, mark each done or failed, count fits per status.
Every status change is a move of `ulpt.catalog.lifecycle` (a compare-and-set on the row's status).
A claimed fit whose worker dies is put back with `requeue_running` (or failed by `fail_exhausted` once
it has taken its worker down `max_attempts` times); a done fit is never claimed again. A running fit
records the store key of its last mid-fit checkpoint, which a later claim resumes from.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, bindparam, cast, column, exists, func, insert, select, update, values
from sqlalchemy.orm import Session

from ulpt.catalog.lifecycle import (
    FIT_TERMINAL,
    JOB_TERMINAL,
    FitRowState,
    JobState,
    fit_move,
    fit_state,
    job_state,
    move_fits,
    move_job,
)
from ulpt.catalog.models import FitRow, JobRow, new_id, utcnow
from ulpt.catalog.names import check_json, check_priority
from ulpt.catalog.tenants import ensure_tenant
from ulpt.errors import ConflictError, NotFoundError, SpecError


def as_uuid(value: uuid.UUID | str, what: str = "job id") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise SpecError(f"invalid {what} {value!r}: expected a UUID") from None


def create_job(
    session: Session,
    tenant: str,
    spec: Mapping[str, Any],
    *,
    name: str | None = None,
    priority: int = 0,
    driver: str | None = None,
) -> JobRow:
    """A pending job; a job trained by a pool names it as its `driver` from the start (`PoolKey.name`)."""
    ensure_tenant(session, tenant)
    spec = check_json(dict(spec), "job spec")
    priority = check_priority(priority)
    job = JobRow(tenant=tenant, name=name, spec=spec, status=_PENDING_JOB, priority=priority, driver=driver)
    session.add(job)
    session.flush()
    return job


_PENDING_JOB = JobState.PENDING.value


def get_job(session: Session, job_id: uuid.UUID | str, tenant: str | None = None) -> JobRow:
    job = session.get(JobRow, as_uuid(job_id))
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFoundError(f"no job {job_id}" + (f" in tenant {tenant!r}" if tenant else ""))
    return job


def list_jobs(session: Session, tenant: str, *, status: str | None = None, limit: int = 50) -> list[JobRow]:
    stmt = select(JobRow).where(JobRow.tenant == tenant)
    if status is not None:
        stmt = stmt.where(JobRow.status == job_state(status).value)
    return list(session.scalars(stmt.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)))


def set_job_status(
    session: Session,
    job_id: uuid.UUID | str,
    status: str,
    *,
    error: str | None = None,
    timings: Mapping[str, Any] | None = None,
) -> None:
    """Move a job to `status` from any status the state machine allows; ConflictError if it cannot move.

    For operators and tests; drivers claim a job with `lifecycle.claim_job` and end it through their claim.
    """
    to = job_state(status)
    job = get_job(session, job_id)
    changes: dict[str, Any] = {} if error is None else {"error": error}
    if timings is not None:
        changes["timings"] = check_json(dict(timings), "job timings")
    if not move_job(session, job.id, to, **changes):
        raise ConflictError(f"job {job.id} cannot go from {job.status} to {to}")


def add_fits(
    session: Session, job_id: uuid.UUID | str, fits: Iterable[str | tuple[str, Mapping[str, Any] | None]]
) -> int:
    """Add fits by key (optionally with per-fit spec overrides) in bulk inserts; returns how many.

    Inserted `_FITS_PER_INSERT` at a time from an iterable the caller may generate lazily, so a job of
    100,000 fits never holds every row's parameters at once (all in the caller's one transaction).
    """
    job = get_job(session, job_id)
    added = 0
    rows: list[dict[str, Any]] = []
    for fit in fits:
        key, spec = (fit, None) if isinstance(fit, str) else fit
        if not isinstance(key, str) or not 1 <= len(key) <= 256:
            raise SpecError(f"fit key must be a string of 1-256 characters, got {key!r}")
        record = None if spec is None else dict(spec)
        rows.append({"id": new_id(), "job_id": job.id, "key": key, "status": _PENDING, "spec": record})
        if len(rows) == _FITS_PER_INSERT:
            added += _insert_fits(session, rows)
            rows = []
    added += _insert_fits(session, rows)
    if added:
        job.n_fits += added
        session.flush()
    return added


_FITS_PER_INSERT = 5000
_PENDING = FitRowState.PENDING.value


def _insert_fits(session: Session, rows: list[dict[str, Any]]) -> int:
    if rows:
        session.execute(insert(FitRow), rows)
    return len(rows)


def claim_fits(session: Session, job_id: uuid.UUID | str, limit: int, worker: str) -> list[FitRow]:
    """Atomically move up to `limit` pending fits to running for `worker`; no two workers get one fit.

    Nothing is claimed once the job has ended (cancelled, failed): the job's status is checked in the
    same statement, so a cancel that commits before a claim leaves every fit pending.
    """
    job = as_uuid(job_id)
    pending = (
        select(FitRow.id)
        .where(FitRow.job_id == job, FitRow.status == FitRowState.PENDING.value)
        .order_by(FitRow.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(pending))
    if not ids:
        return []
    job_open = exists().where(JobRow.id == job, JobRow.status.not_in([s.value for s in JOB_TERMINAL]))
    claimed = session.scalars(
        fit_move(FitRowState.RUNNING)  # re-checks pending: SQLite has no row locks
        .where(FitRow.id.in_(ids), job_open)
        .values(worker=worker, attempts=FitRow.attempts + 1, started_at=utcnow(), error=None)
        .returning(FitRow)
    )
    return sorted(claimed, key=lambda fit: fit.id)


def mark_fit_done(
    session: Session,
    fit_id: uuid.UUID | str,
    *,
    adapter_id: uuid.UUID | str | None = None,
    metrics: Mapping[str, Any] | None = None,
    timings: Mapping[str, Any] | None = None,
) -> None:
    mark_fits_done(session, [FitOutcome(_get_fit(session, fit_id).id, adapter_id, metrics, timings)])


@dataclass(frozen=True)
class FitOutcome:
    """A finished fit for `mark_fits_done`: its adapter, metrics and timings."""

    fit_id: uuid.UUID | str
    adapter_id: uuid.UUID | str | None = None
    metrics: Mapping[str, Any] | None = None
    timings: Mapping[str, Any] | None = None


_OUTCOME_COLUMNS = ("adapter_id", "metrics", "timings")
"""What each finished fit sets for itself (`mark_fits_done`); the rest is the same for all."""


def mark_fits_done(session: Session, outcomes: Sequence[FitOutcome]) -> None:
    """Mark many fits done in ONE statement.

    A packed worker finishes fits by the dozen; marking them one by one cost a read and a write per fit,
    which is what bounded the control plane's throughput at scale (benchmarks/control_plane.py).
    PostgreSQL: one `UPDATE ... FROM (VALUES ...)`, one plan and one round trip for the whole batch
    (an executemany still sent and planned a statement per fit). SQLite: one executemany by key.
    """
    if not outcomes:
        return
    rows = [
        {
            "id": as_uuid(outcome.fit_id, "fit id"),
            "adapter_id": None if outcome.adapter_id is None else as_uuid(outcome.adapter_id, "adapter id"),
            "metrics": None if outcome.metrics is None else check_json(dict(outcome.metrics), "fit metrics"),
            "timings": None if outcome.timings is None else check_json(dict(outcome.timings), "fit timings"),
        }
        for outcome in outcomes
    ]
    done = fit_move(FitRowState.DONE).values(error=None)  # a fit already done (or failed) stays as it is
    if session.get_bind().dialect.name != "postgresql":
        fits = FitRow.__table__.c
        by_id = done.where(FitRow.id == bindparam("fit_id")).values(
            **{name: bindparam(f"new_{name}", type_=fits[name].type) for name in _OUTCOME_COLUMNS}
        )
        params = [{"fit_id": row["id"], **{f"new_{k}": row[k] for k in _OUTCOME_COLUMNS}} for row in rows]
        session.connection().execute(by_id, params)  # Core's executemany: not the ORM's bulk by key
        return
    fits = FitRow.__table__.c
    batch = values(
        *(column(name, fits[name].type) for name in ("id", *_OUTCOME_COLUMNS)),
        name="done",
    ).data([tuple(row.values()) for row in rows])
    session.execute(
        done.where(FitRow.id == batch.c.id).values(
            # cast: a VALUES column of NULLs only is text to PostgreSQL, whatever its bind type says
            **{name: cast(batch.c[name], fits[name].type) for name in _OUTCOME_COLUMNS},
        )
    )


def mark_fit_failed(session: Session, fit_id: uuid.UUID | str, error: str, *, retry: bool = False) -> bool:
    """Record a fit's error; `retry` puts a running fit back to pending (its attempts count stays).

    Whether it moved: a fit that ended meanwhile (or, for a retry, is no longer running) is left alone.
    """
    fit = _get_fit(session, fit_id)
    to = FitRowState.PENDING if retry else FitRowState.FAILED
    return bool(move_fits(session, to, FitRow.id == fit.id, error=error))


def release_fits(session: Session, fit_ids: Sequence[uuid.UUID], reason: str, *, worker: str) -> int:
    """Put `worker`'s running fits back to pending after a clean stop (their job was cancelled): the
    claim is not counted as an attempt, and each keeps its checkpoint, so a resume goes on from it.

    A fit another worker claimed since (a resume that requeued it) is not this worker's to give back.
    """
    if not fit_ids:
        return 0
    return move_fits(
        session,
        FitRowState.PENDING,
        FitRow.id.in_(list(fit_ids)),
        FitRow.worker == worker,
        only=[FitRowState.RUNNING],
        error=reason,
        attempts=FitRow.attempts - 1,
    )


def record_checkpoint(session: Session, fit_ids: Sequence[uuid.UUID], key: str) -> None:
    """Point running fits at the checkpoint blob `key` that holds their state (one statement per pack)."""
    if fit_ids:
        session.execute(
            update(FitRow)
            .where(FitRow.id.in_(list(fit_ids)), FitRow.status == FitRowState.RUNNING.value)
            .values(checkpoint=key)
            .execution_options(synchronize_session=False)
        )


def fail_exhausted(
    session: Session, job_id: uuid.UUID | str, max_attempts: int, *where: ColumnElement[bool]
) -> int:
    """Fail the running fits of a job whose worker died that have been claimed `max_attempts` times.

    Call it where `requeue_running` is called, before it (with the same `where`: e.g. only the fits
    whose pool lease ran out): a fit that took its worker down on every attempt (out of memory on one
    huge row, say) ends failed with the reason, and the job goes on.
    """
    return move_fits(
        session,
        FitRowState.FAILED,
        FitRow.job_id == as_uuid(job_id),
        *where,
        FitRow.attempts >= max_attempts,
        only=[FitRowState.RUNNING],
        worker=None,
        error=f"its worker stopped while training it on each of its {max_attempts} attempt(s) "
        "(train.max_attempts); e.g. out of memory",
    )


def requeue_running(
    session: Session, job_id: uuid.UUID | str, *where: ColumnElement[bool], worker: str | None = None
) -> int:
    """Put fits stuck in running (their worker died) back to pending, keeping their checkpoints;
    returns how many (`where` narrows them, e.g. to fits whose pool lease ran out)."""
    job, mine = FitRow.job_id == as_uuid(job_id), () if worker is None else (FitRow.worker == worker,)
    return move_fits(session, FitRowState.PENDING, job, *where, *mine, only=[FitRowState.RUNNING])


def fit_counts(session: Session, job_id: uuid.UUID | str) -> dict[str, int]:
    """Fits per status, every status present (0 if none)."""
    counts = {state.value: 0 for state in FitRowState}
    rows = session.execute(
        select(FitRow.status, func.count()).where(FitRow.job_id == as_uuid(job_id)).group_by(FitRow.status)
    )
    counts.update({status: count for status, count in rows})
    return counts


def verdict_counts(session: Session, job_id: uuid.UUID | str) -> dict[str, int]:
    """{"evaluated": done fits that carry a verdict, "learned": those that beat zero-shot}.

    Read from each fit's recorded metrics (`ulpt.training.verdict`), so a job's progress can say
    how many of its fits learned while it still runs, without loading the fits.
    """
    verdict = FitRow.metrics["learned"].as_float()
    done = select(func.count()).where(
        FitRow.job_id == as_uuid(job_id), FitRow.status == FitRowState.DONE.value, verdict.is_not(None)
    )
    evaluated = session.scalar(done) or 0
    learned = session.scalar(done.where(verdict >= 1.0)) or 0
    return {"evaluated": int(evaluated), "learned": int(learned)}


def list_fits(
    session: Session, job_id: uuid.UUID | str, *, status: str | None = None, limit: int | None = None
) -> list[FitRow]:
    stmt = select(FitRow).where(FitRow.job_id == as_uuid(job_id))
    if status is not None:
        stmt = stmt.where(FitRow.status == fit_state(status).value)
    stmt = stmt.order_by(FitRow.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def fits_by_key(session: Session, job_id: uuid.UUID | str, keys: Sequence[str]) -> dict[str, FitRow]:
    rows = session.scalars(select(FitRow).where(FitRow.job_id == as_uuid(job_id), FitRow.key.in_(list(keys))))
    return {row.key: row for row in rows}


def fingerprints_of_open_jobs(session: Session) -> set[str]:
    """Dataset fingerprints of the fits of every job that is not done: a pending, running, failed or
    cancelled job can still (re)start, and its workers fetch those rows from the store."""
    specs = session.scalars(
        select(FitRow.spec)
        .join(JobRow, JobRow.id == FitRow.job_id)
        .where(JobRow.status != JobState.DONE.value)
    )
    return {fp for spec in specs if isinstance(fp := (spec or {}).get("dataset_fingerprint"), str)}


def checkpoints_of_open_fits(session: Session) -> set[str]:
    """Store keys of the last checkpoints of fits that may still train (pending or running)."""
    keys = session.scalars(
        select(FitRow.checkpoint)
        .where(FitRow.status.not_in([s.value for s in FIT_TERMINAL]), FitRow.checkpoint.is_not(None))
        .distinct()
    )
    return {key for key in keys if key}


def _get_fit(session: Session, fit_id: uuid.UUID | str) -> FitRow:
    fit = session.get(FitRow, as_uuid(fit_id, "fit id"))
    if fit is None:
        raise NotFoundError(f"no fit {fit_id}")
    return fit
