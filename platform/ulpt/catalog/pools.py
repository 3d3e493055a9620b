"""Trainer pools' rows: fair claims of pending fits across jobs and tenants, leases, and their expiry.

A trainer pool serves one (base model, dtype, device kind); a pooled job names its pool as its
`driver` from submission (`PoolKey.name`), so a pool's claimable fits are one join away and a job on
dedicated workers (any other driver) is never claimed here. A member claims fits for a lease and
renews it while it trains them; a fit whose lease ran out (its member died or hung) goes back to
pending from its checkpoint, or fails once its attempts reach the job's cap, as a driver's
`reconcile` does for a dedicated job. Every status write is a move of `ulpt.catalog.lifecycle`.
See docs/pools.md for the design this implements.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, select, update
from sqlalchemy.orm import Session

from ulpt.catalog.jobs import fail_exhausted, fit_counts, requeue_running
from ulpt.catalog.lifecycle import (
    FitRowState,
    JobState,
    fit_move,
    job_move,
    job_outcome,
)
from ulpt.catalog.models import FitRow, JobRow, PoolMemberRow, TenantRow, utcnow
from ulpt.catalog.tenants import dialect_insert
from ulpt.errors import SpecError
from ulpt.jobspec import max_attempts_of

POOL_JOB_STATES = (JobState.PENDING.value, JobState.RUNNING.value)
"""A pooled job's fits are claimable while it is in these (never once cancelled, failed or done)."""
POOL_PREFIX = "pool:"
"""How a pooled job's driver starts: no dedicated driver's name does (host:pid:token)."""
_DRIVER_CHARS = 128
"""The width of `jobs.driver`, which names a pooled job's pool."""


@dataclass(frozen=True)
class PoolKey:
    """What a pool member can train: fits for one base model, in one dtype, on one kind of device."""

    base_model: str
    dtype: str
    """Resolved (float32, bfloat16, float16), never `auto`: pools of one base differ by it."""
    device: str
    """The device kind: cpu, cuda."""

    @property
    def name(self) -> str:
        """`pool:BASE/DTYPE/DEVICE`, the `driver` of the jobs it trains (a long base path is hashed)."""
        name = f"{POOL_PREFIX}{self.base_model}/{self.dtype}/{self.device}"
        if len(name) <= _DRIVER_CHARS:
            return name
        digest = hashlib.sha256(self.base_model.encode()).hexdigest()[:32]
        return f"{POOL_PREFIX}sha256-{digest}/{self.dtype}/{self.device}"[:_DRIVER_CHARS]


def claim_fits_fairly(
    session: Session,
    pool: PoolKey,
    member: str,
    k: int,
    lease_s: float,
    *,
    now: datetime | None = None,
) -> list[FitRow]:
    """Move up to `k` pending fits of `pool`'s jobs to running for `member`, in weighted fair order.

    A tenant's n-th next fit ranks at (its fits running in this pool + n) / its weight, fewest first,
    so a tenant with one pending fit is served in the next claim however many fits another tenant
    has queued; ties go to the higher job priority, then the older fit (ids are UUIDv7). Within a
    tenant, fits come by job priority, then age. The first claim of a job's fit moves the job
    pending -> running in the same transaction. On PostgreSQL the chosen rows are locked with
    `SKIP LOCKED`, so members claiming at once take different fits without waiting for each other;
    the order is a preference, the compare-and-set move (job still open, fit still pending) is the
    guarantee. Each claimed fit holds a lease of `lease_s` seconds, counts an attempt, and keeps
    the checkpoint it resumes from.
    """
    if k < 1:
        return []
    if not lease_s > 0:
        raise SpecError(f"a pool lease must be a positive number of seconds, got {lease_s!r}")
    now = now or utcnow()
    in_pool = JobRow.driver == pool.name
    running = (
        select(JobRow.tenant.label("tenant"), func.count().label("fits"))
        .select_from(FitRow)
        .join(JobRow, JobRow.id == FitRow.job_id)
        .where(in_pool, FitRow.status == FitRowState.RUNNING.value)
        .group_by(JobRow.tenant)
        .subquery("running")
    )
    turn = func.row_number().over(partition_by=JobRow.tenant, order_by=(JobRow.priority.desc(), FitRow.id))
    pending = (
        select(
            FitRow.id.label("id"),
            JobRow.tenant.label("tenant"),
            JobRow.priority.label("priority"),
            turn.label("turn"),
        )
        .select_from(FitRow)
        .join(JobRow, JobRow.id == FitRow.job_id)
        .where(in_pool, JobRow.status.in_(POOL_JOB_STATES), FitRow.status == FitRowState.PENDING.value)
        .subquery("pending")
    )
    share = (func.coalesce(running.c.fits, 0) + pending.c.turn) / TenantRow.weight
    chosen = (
        select(FitRow.id)
        .join(pending, pending.c.id == FitRow.id)
        .join(TenantRow, TenantRow.name == pending.c.tenant)
        .outerjoin(running, running.c.tenant == pending.c.tenant)
        .order_by(share, pending.c.priority.desc(), pending.c.id)
        .limit(k)
        .with_for_update(of=FitRow, skip_locked=True)
    )
    order = {fit_id: i for i, fit_id in enumerate(session.scalars(chosen))}
    if not order:
        return []
    job_open = exists().where(JobRow.id == FitRow.job_id, in_pool, JobRow.status.in_(POOL_JOB_STATES))
    claimed = list(
        session.scalars(
            fit_move(FitRowState.RUNNING)  # re-checks pending: SQLite has no row locks
            .where(FitRow.id.in_(list(order)), job_open)
            .values(
                worker=member,
                attempts=FitRow.attempts + 1,
                started_at=now,
                error=None,
                lease_until=now + timedelta(seconds=lease_s),
            )
            .returning(FitRow)
        )
    )
    _start_jobs(session, {fit.job_id for fit in claimed})
    return sorted(claimed, key=lambda fit: order[fit.id])


def _start_jobs(session: Session, job_ids: set[uuid.UUID]) -> None:
    """Move the claimed fits' pending jobs to running. A job row another transaction holds is skipped,
    not waited for (PostgreSQL): that is a member starting it too, or a cancel, which wins anyway."""
    if not job_ids:
        return
    pending = (
        select(JobRow.id)
        .where(JobRow.id.in_(job_ids), JobRow.status == JobState.PENDING.value)
        .with_for_update(skip_locked=True)
    )
    starting = list(session.scalars(pending))
    if starting:
        session.execute(job_move(JobState.RUNNING, only=[JobState.PENDING]).where(JobRow.id.in_(starting)))


def renew_leases(
    session: Session, member: str, lease_s: float, *, now: datetime | None = None
) -> set[uuid.UUID]:
    """Extend the leases of `member`'s running fits to now + `lease_s`, in one statement.

    Returns the fits it still holds: one missing from the set was requeued after its lease ran out
    (or its status moved on) and may be training elsewhere, so the member must drop it.
    """
    if not lease_s > 0:
        raise SpecError(f"a pool lease must be a positive number of seconds, got {lease_s!r}")
    now = now or utcnow()
    renewed = session.scalars(
        update(FitRow)
        .where(FitRow.worker == member, FitRow.status == FitRowState.RUNNING.value)
        .values(lease_until=now + timedelta(seconds=lease_s))
        .returning(FitRow.id)
        .execution_options(synchronize_session=False)
    )
    return set(renewed)


def requeue_expired_leases(session: Session, pool: PoolKey, *, now: datetime | None = None) -> dict[str, int]:
    """Give the running fits of `pool` whose lease ran out back to pending, from their checkpoints.

    As a driver's reconcile does for a dedicated job: a fit already claimed its job's
    `train.max_attempts` times fails with the reason instead (it took its member down each time), and
    a job left with no open fit ends (done or failed, from its fits). Any member may call it between
    steps; two at once requeue each fit once (compare-and-set). Counts: requeued, exhausted, settled.
    """
    now = now or utcnow()
    expired: ColumnElement[bool] = FitRow.lease_until < now
    jobs = session.execute(
        select(JobRow.id, JobRow.spec)
        .where(
            JobRow.driver == pool.name,
            exists().where(FitRow.job_id == JobRow.id, FitRow.status == FitRowState.RUNNING.value, expired),
        )
        .order_by(JobRow.id)
    ).all()
    requeued = exhausted = 0
    for job_id, spec in jobs:
        exhausted += fail_exhausted(session, job_id, max_attempts_of(spec or {}), expired)
        requeued += requeue_running(session, job_id, expired)
    settled = settle_jobs(session, [job_id for job_id, _ in jobs]) if exhausted else 0
    return {"requeued": requeued, "exhausted": exhausted, "settled": settled}


def settle_jobs(session: Session, job_ids: Iterable[uuid.UUID]) -> int:
    """End each pending or running job that has no open fit left, as its fits say (`job_outcome`).

    How a pooled job ends: no driver waits for it, so whoever ends its last open fit settles it. A
    compare-and-set: of two members settling one job at once, one moves it. How many ended.
    """
    ended = 0
    for job_id in job_ids:
        counts = fit_counts(session, job_id)
        if counts[FitRowState.PENDING.value] or counts[FitRowState.RUNNING.value]:
            continue
        to, error = job_outcome(counts)
        moved = session.execute(
            job_move(to, only=[JobState.PENDING, JobState.RUNNING])
            .where(JobRow.id == job_id)
            .values(error=error)
        )
        ended += int(moved.rowcount)  # type: ignore[attr-defined]
    return ended


# ---- members and what `ulpt pools list` shows ----------------------------------------------------

MEMBER_STALE_S = 30.0
"""A member whose heartbeat is older than this is taken for dead and not listed."""


@dataclass(frozen=True)
class MemberReport:
    """What a member reports with each heartbeat: its fits and its last step's packing."""

    fits: int
    steps: int
    fits_per_forward: float
    rows_per_forward: float


def beat_member(session: Session, pool: PoolKey, member: str, report: MemberReport) -> None:
    """Record that `member` of `pool` is alive, with its report (one upsert)."""
    values = {"pool": pool.name, "heartbeat_at": utcnow(), **report.__dict__}
    insert = dialect_insert(session, PoolMemberRow).values(id=member, **values)
    session.execute(insert.on_conflict_do_update(index_elements=["id"], set_=values))


def leave_pool(session: Session, member: str) -> None:
    """A member that stops cleanly takes its row with it."""
    session.execute(delete(PoolMemberRow).where(PoolMemberRow.id == member))


@dataclass(frozen=True)
class PoolOverview:
    """One pool as `ulpt pools list` shows it."""

    pool: str
    members: list[dict[str, Any]]
    """Live members: id, fits, steps, fits_per_forward, rows_per_forward, heartbeat_at."""
    queue_depth: int
    """Pending fits of its open jobs: what its members can claim now."""
    running_per_tenant: dict[str, int]


def pool_overview(session: Session, *, now: datetime | None = None) -> list[PoolOverview]:
    """Every pool with a live member or an open pooled job, by name."""
    now = now or utcnow()
    alive = session.scalars(
        select(PoolMemberRow)
        .where(PoolMemberRow.heartbeat_at >= now - timedelta(seconds=MEMBER_STALE_S))
        .order_by(PoolMemberRow.pool, PoolMemberRow.id)
    ).all()
    pooled = JobRow.driver.startswith(POOL_PREFIX, autoescape=True)
    fits = session.execute(
        select(JobRow.driver, JobRow.tenant, FitRow.status, func.count())
        .join(FitRow, FitRow.job_id == JobRow.id)
        .where(pooled, JobRow.status.in_(POOL_JOB_STATES), FitRow.status.in_(_OPEN_FITS))
        .group_by(JobRow.driver, JobRow.tenant, FitRow.status)
    ).all()
    names = sorted({m.pool for m in alive} | {str(driver) for driver, *_ in fits})
    out = []
    for name in names:
        running: dict[str, int] = {}
        queued = 0
        for driver, tenant, status, count in fits:
            if driver != name:
                continue
            if status == FitRowState.PENDING.value:
                queued += count
            else:
                running[tenant] = running.get(tenant, 0) + count
        members = [
            {
                "id": m.id,
                "fits": m.fits,
                "steps": m.steps,
                "fits_per_forward": m.fits_per_forward,
                "rows_per_forward": m.rows_per_forward,
                "heartbeat_at": m.heartbeat_at,
            }
            for m in alive
            if m.pool == name
        ]
        out.append(PoolOverview(name, members, queued, dict(sorted(running.items()))))
    return out


_OPEN_FITS = (FitRowState.PENDING.value, FitRowState.RUNNING.value)
