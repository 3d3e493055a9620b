"""The one state machine of jobs and fits: their statuses, which moves are allowed, and the writes.

Every status a job or fit row takes is written here, as ONE `UPDATE ... WHERE status IN (sources)`
whose sources come from the transition tables below, so a move is a compare-and-set: two writers
racing on one row (a cancel and a driver starting, two resumes, a worker and a requeue) cannot both
win, and the loser learns it from the row count instead of overwriting the winner. Nothing here
knows Ray or drivers beyond a driver's name: the jobs layer decides *when* to move, this module
decides *whether* a move is legal and makes it atomically.

A job is terminal when no process works on it (`JOB_TERMINAL`): done, failed or cancelled. Failed and
cancelled jobs may be resumed (back to running); a done job never moves again. A fit is terminal once
done or failed; a running fit goes back to pending when its worker stops without finishing it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Update, func, literal, or_, update
from sqlalchemy.orm import Session

from ulpt.catalog.models import FitRow, JobRow, UTCDateTime, utcnow
from ulpt.errors import SpecError


class _Status(str, Enum):
    """A status stored as its value (a plain string column); prints as the value."""

    def __str__(self) -> str:
        return str(self.value)


class JobState(_Status):
    """Where a job is: waiting for a driver, driven, or ended (and how)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FitRowState(_Status):
    """Where one fit's catalog row is (not `ulpt.training.FitState`, a fit being stepped in memory)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


JOB_TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
"""No process works on a job in these; only a resume (failed, cancelled) moves it on."""
FIT_TERMINAL = frozenset({FitRowState.DONE, FitRowState.FAILED})
"""A fit in these is never trained again."""

JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset(
        {
            JobState.RUNNING,  # a driver claimed it
            JobState.CANCELLED,
            JobState.DONE,  # settled from its fits without a driver: every fit had already ended
            JobState.FAILED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.RUNNING,  # another driver takes over one whose heartbeat stopped (or --force)
            JobState.DONE,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.FAILED: frozenset({JobState.RUNNING}),  # resumed
    JobState.CANCELLED: frozenset({JobState.RUNNING}),  # resumed
    JobState.DONE: frozenset(),
}
FIT_TRANSITIONS: Mapping[FitRowState, frozenset[FitRowState]] = {
    FitRowState.PENDING: frozenset(
        {
            FitRowState.RUNNING,  # claimed by a worker
            FitRowState.DONE,  # its adapter was registered by a worker that died before marking it
            FitRowState.FAILED,  # known not to train (its rows, its spec)
        }
    ),
    FitRowState.RUNNING: frozenset(
        {
            FitRowState.PENDING,  # its worker died, gave it back (cancel), or asked for a retry
            FitRowState.DONE,
            FitRowState.FAILED,
        }
    ),
    FitRowState.DONE: frozenset(),
    FitRowState.FAILED: frozenset(),
}

S = TypeVar("S", JobState, FitRowState)


def sources(table: Mapping[S, frozenset[S]], to: S) -> frozenset[S]:
    """The statuses a row may move to `to` from."""
    return frozenset(state for state, targets in table.items() if to in targets)


NEW_JOB = frozenset({JobState.PENDING})
"""What the driver of a new submission claims from: a job cancelled before its driver started stays so."""
RESUMABLE = sources(JOB_TRANSITIONS, JobState.RUNNING)
"""What a resume claims from (a running job only once its driver's heartbeat stopped, or with force)."""


def job_outcome(counts: Mapping[str, int], error: str | None = None) -> tuple[JobState, str | None]:
    """How a job ends once no worker trains it, derived from its fits' counts (and the driver's error).

    Done when every fit ended and at least one is done (some may have failed alone: the error counts
    them); failed when fits are left unfinished, when every fit failed, or on the driver's own error.
    """
    unfinished = sum(counts.get(state.value, 0) for state in FitRowState if state not in FIT_TERMINAL)
    done, failed = counts.get(FitRowState.DONE.value, 0), counts.get(FitRowState.FAILED.value, 0)
    if error is None and unfinished:
        error = f"{unfinished} fit(s) did not finish"
    if error is None and failed and not done:
        error = f"all {failed} fit(s) failed"
    if error is None:
        return JobState.DONE, (f"{failed} of {done + failed} fit(s) failed" if failed else None)
    return JobState.FAILED, error


def job_state(value: str) -> JobState:
    """A job status from user input; one line naming the valid ones otherwise."""
    try:
        return JobState(value)
    except ValueError:
        raise SpecError(f"job status must be one of {', '.join(JobState)}, got {value!r}") from None


def fit_state(value: str) -> FitRowState:
    try:
        return FitRowState(value)
    except ValueError:
        raise SpecError(f"fit status must be one of {', '.join(FitRowState)}, got {value!r}") from None


def _chosen(table: Mapping[S, frozenset[S]], to: S, only: Iterable[S] | None) -> list[Any]:
    """The source statuses of a move (all the table allows, or the caller's narrower set), as one bound
    value each (not one expanding IN parameter, which an executemany cannot take)."""
    allowed = sources(table, to)
    chosen = allowed if only is None else frozenset(only)
    if not chosen <= allowed:
        illegal = ", ".join(sorted(s.value for s in chosen - allowed))
        raise ValueError(f"no transition from {illegal} to {to.value}")  # a bug in the caller, not input
    return [literal(value) for value in sorted(s.value for s in chosen)]


# ---- jobs ----------------------------------------------------------------------------------------


def job_move(to: JobState, *, only: Iterable[JobState] | None = None) -> Update:
    """`UPDATE jobs SET status = to` for rows whose status may move there; stamps the times.

    started_at on the first run, finished_at on an end state (cleared when a job runs again); the
    caller adds its own `.where(...)` (the job id, a driver) and `.values(...)`.
    """
    stamps: dict[str, Any] = {"status": to.value}
    if to is JobState.RUNNING:
        now = literal(utcnow(), UTCDateTime())
        stamps |= {"started_at": func.coalesce(JobRow.started_at, now), "finished_at": None}
    elif to in JOB_TERMINAL:
        stamps |= {"finished_at": utcnow(), "heartbeat_at": None}
    return (
        update(JobRow)
        .where(JobRow.status.in_(_chosen(JOB_TRANSITIONS, to, only)))
        .values(**stamps)
        .execution_options(synchronize_session=False)
    )


def move_job(
    session: Session,
    job_id: uuid.UUID,
    to: JobState,
    *,
    only: Iterable[JobState] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Move one job to `to` if its status (and `where`) still allow it; whether it moved."""
    stmt = job_move(to, only=only).where(JobRow.id == job_id, *where)
    if values:
        stmt = stmt.values(**values)
    moved = bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
    if moved:
        session.expire_all()  # ORM copies of the row read before the UPDATE are stale now
    return moved


def claim_job(
    session: Session,
    job_id: uuid.UUID,
    driver: str,
    *,
    only: Iterable[JobState],
    stale_before: datetime | None,
) -> bool:
    """Make `driver` the job's one driver: running, attempt + 1, a fresh heartbeat. Whether it won.

    `only` says which statuses a claim starts from (a new job: pending; a resume: pending, failed,
    cancelled). A running job is taken over only when its heartbeat is older than `stale_before`
    (None: whatever its heartbeat, `--force`), so of N drivers claiming at once exactly one wins.
    """
    starts = frozenset(only) - {JobState.RUNNING}
    claimable: ColumnElement[bool] = JobRow.status.in_([s.value for s in starts])
    if JobState.RUNNING in frozenset(only):
        stale: ColumnElement[bool] = JobRow.status == JobState.RUNNING.value
        if stale_before is not None:
            stale = stale & or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < stale_before)
        claimable = or_(claimable, stale)
    return move_job(
        session,
        job_id,
        JobState.RUNNING,
        where=[claimable],
        driver=driver,
        attempt=JobRow.attempt + 1,
        heartbeat_at=utcnow(),
        error=None,
    )


def beat(session: Session, job_id: uuid.UUID, driver: str) -> bool:
    """Renew `driver`'s heartbeat; False when the job is no longer its to drive (cancelled, taken over)."""
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.driver == driver, JobRow.status == JobState.RUNNING.value)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# ---- fits ----------------------------------------------------------------------------------------


def fit_move(to: FitRowState, *, only: Iterable[FitRowState] | None = None) -> Update:
    """`UPDATE fits SET status = to` for rows whose status may move there; the caller adds the rest.

    Leaving for pending drops the worker and its pool lease; an end state stamps finished_at and drops
    the lease and the checkpoint (a finished fit's checkpoints are garbage, `ulpt gc` collects them once
    no fit names them).
    """
    stamps: dict[str, Any] = {"status": to.value}
    if to is FitRowState.PENDING:
        stamps |= {"worker": None, "finished_at": None, "lease_until": None}
    elif to in FIT_TERMINAL:
        stamps |= {"finished_at": utcnow(), "checkpoint": None, "lease_until": None}
    return (
        update(FitRow)
        .where(FitRow.status.in_(_chosen(FIT_TRANSITIONS, to, only)))
        .values(**stamps)
        .execution_options(synchronize_session=False)
    )


def move_fits(
    session: Session,
    to: FitRowState,
    *where: ColumnElement[bool],
    only: Iterable[FitRowState] | None = None,
    **values: Any,
) -> int:
    """Move the fits matching `where` whose status allows it to `to`; how many moved."""
    stmt = fit_move(to, only=only).where(*where)
    if values:
        stmt = stmt.values(**values)
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
