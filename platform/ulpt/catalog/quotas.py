"""Per-tenant quotas, checked when a job is submitted (docs/pools.md): how many fits a tenant may have
waiting, and how much training one job may ask for (rows x steps summed over its fits).

A refusal is a `QuotaError` naming the quota, the tenant's use and the limit; the control plane
answers 429 when waiting would help (the pending fits drain as pools train them) and 413 when the job
itself is too big. Limits live on the tenant row (NULL: none). The check runs in the submission's
transaction, before its fits are inserted; two submissions of one tenant at the same moment may both
pass against the count before either (a bound that holds to within one job, not an exact one).
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ulpt.catalog.lifecycle import JOB_TERMINAL, FitRowState
from ulpt.catalog.models import FitRow, JobRow, TenantRow
from ulpt.catalog.tenants import ensure_tenant
from ulpt.errors import QuotaError, SpecError

MAX_QUOTA = 10**15
_UNSET = object()


def set_tenant_quotas(
    session: Session,
    tenant: str,
    *,
    max_pending_fits: int | None | object = _UNSET,
    max_job_row_steps: int | None | object = _UNSET,
) -> None:
    """Set (a number) or lift (None) a tenant's quotas; a quota not named keeps its value."""
    values = {
        name: _limit(name, value)
        for name, value in (("max_pending_fits", max_pending_fits), ("max_job_row_steps", max_job_row_steps))
        if value is not _UNSET
    }
    ensure_tenant(session, tenant)
    if values:
        session.execute(update(TenantRow).where(TenantRow.name == tenant).values(**values))


def check_submission(
    session: Session, tenant: str, *, fits: int, row_steps: int, default_max_pending: int | None = None
) -> None:
    """Refuse a job of `fits` fits and `row_steps` rows x steps in all if a quota of `tenant` forbids it.

    `default_max_pending` is the operator's policy (the control plane's `limits.max_pending_fits`),
    for tenants whose row sets no limit of their own: one mechanism, whoever submits.
    """
    limits = session.execute(
        select(TenantRow.max_pending_fits, TenantRow.max_job_row_steps).where(TenantRow.name == tenant)
    ).first()
    max_pending, max_row_steps = limits if limits is not None else (None, None)
    if max_pending is None:
        max_pending = default_max_pending
    if max_row_steps is not None and row_steps > max_row_steps:
        raise QuotaError(
            f"tenant {tenant!r}: this job trains {row_steps:,} rows x steps, over its quota of "
            f"{max_row_steps:,} per job (max_job_row_steps); split it or train fewer steps",
            rate=False,
        )
    if max_pending is None:
        return
    if fits > max_pending:
        raise QuotaError(
            f"tenant {tenant!r}: this job has {fits:,} fits, over its quota of {max_pending:,} pending "
            "fits (max_pending_fits); split it",
            rate=False,
        )
    waiting = session.scalar(
        select(func.count())
        .select_from(FitRow)
        .join(JobRow, JobRow.id == FitRow.job_id)
        .where(
            JobRow.tenant == tenant,
            JobRow.status.not_in([s.value for s in JOB_TERMINAL]),
            FitRow.status == FitRowState.PENDING.value,
        )
    )
    if (waiting or 0) + fits > max_pending:
        raise QuotaError(
            f"tenant {tenant!r}: {waiting:,} fits are already waiting and this job adds {fits:,}, over its "
            f"quota of {max_pending:,} pending fits (max_pending_fits); retry once they have trained",
            rate=True,
        )


def _limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
        raise SpecError(f"{name} must be a whole number from 0 to {MAX_QUOTA:.0e} (or none), got {value!r}")
    return value
