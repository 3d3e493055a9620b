"""A job's driver, heartbeat and attempt become columns instead of entries of its `timings` JSON.

They are state, not timings: a driver claims a job with one compare-and-set UPDATE on its status and
heartbeat, and "which running jobs lost their driver" is an indexed query on (status, heartbeat_at).
Existing jobs keep what their JSON held: `driver`, `attempt` and the ISO `heartbeat` are copied into
the new columns and dropped from `timings` (and put back there by the downgrade).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOVED = ("driver", "heartbeat", "attempt")
"""The `timings` keys that became columns (`heartbeat` as `heartbeat_at`)."""


def _jobs() -> sa.Table:
    """The columns this migration reads and writes, as they are at this revision."""
    json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    return sa.table(
        "jobs",
        sa.column("id", sa.Uuid()),
        sa.column("timings", json),
        sa.column("driver", sa.String(128)),
        sa.column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.column("attempt", sa.Integer()),
    )


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("driver", sa.String(128), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        batch.create_index(batch.f("ix_jobs_status_heartbeat_at"), ["status", "heartbeat_at"])
    jobs, bind = _jobs(), op.get_bind()
    for job_id, timings in bind.execute(sa.select(jobs.c.id, jobs.c.timings)).all():
        if not isinstance(timings, dict) or not any(key in timings for key in MOVED):
            continue
        kept = {key: value for key, value in timings.items() if key not in MOVED}
        bind.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                timings=kept or None,
                driver=_text(timings.get("driver")),
                heartbeat_at=_when(timings.get("heartbeat"), bind.dialect.name),
                attempt=_count(timings.get("attempt")),
            )
        )


def downgrade() -> None:
    jobs, bind = _jobs(), op.get_bind()
    columns = (jobs.c.id, jobs.c.timings, jobs.c.driver, jobs.c.heartbeat_at, jobs.c.attempt)
    for job_id, timings, driver, heartbeat_at, attempt in bind.execute(sa.select(*columns)).all():
        if driver is None and heartbeat_at is None and not attempt:
            continue
        moved = {"driver": driver, "attempt": attempt, "heartbeat": _iso(heartbeat_at)}
        bind.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(timings={**(timings or {}), **{k: v for k, v in moved.items() if v is not None}})
        )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_status_heartbeat_at"))
        batch.drop_column("attempt")
        batch.drop_column("heartbeat_at")
        batch.drop_column("driver")


def _text(value: Any) -> str | None:
    return value[:128] if isinstance(value, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _when(value: Any, dialect: str) -> datetime | None:
    """The ISO heartbeat as a UTC datetime (naive on SQLite, as the catalog stores it there)."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return when.replace(tzinfo=None) if dialect == "sqlite" else when


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
