"""Trainer pools' rows: a fit's lease, a job's priority, a tenant's weight, and the pools' members
(docs/pools.md).

A pool member claims fits for a lease (`fits.lease_until`, renewed while it trains them); a fit whose
lease ran out goes back to pending, so "which fits lost their member" is one indexed query on
(status, lease_until). Claims order tenants by their running fits over their `weight`, then jobs by
`priority`. Every column has a default, so existing rows need no copying: no lease, priority 0, weight 1.
A tenant's quotas (`max_pending_fits`, `max_job_row_steps`) are checked at submission; NULL: no limit.
`pool_members` holds one row per live member (its heartbeat and packing), read by `ulpt pools list`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fits") as batch:
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(batch.f("ix_fits_status_lease_until"), ["status", "lease_until"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), server_default="1", nullable=False))
        batch.add_column(sa.Column("max_pending_fits", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_job_row_steps", sa.BigInteger(), nullable=True))
    op.create_table(
        "pool_members",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fits", sa.Integer(), nullable=False),
        sa.Column("steps", sa.BigInteger(), nullable=False),
        sa.Column("fits_per_forward", sa.Float(), nullable=False),
        sa.Column("rows_per_forward", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_members")),
    )
    op.create_index(op.f("ix_pool_members_pool_heartbeat_at"), "pool_members", ["pool", "heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pool_members_pool_heartbeat_at"), table_name="pool_members")
    op.drop_table("pool_members")
    # recreate="never": SQLite (3.35+) drops a column in place; a batch copy of `tenants` or `jobs`
    # would DROP the old table, which the foreign keys pointing at it refuse.
    with op.batch_alter_table("tenants", recreate="never") as batch:
        batch.drop_column("max_job_row_steps")
        batch.drop_column("max_pending_fits")
        batch.drop_column("weight")
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.drop_column("priority")
    with op.batch_alter_table("fits", recreate="never") as batch:
        batch.drop_index(batch.f("ix_fits_status_lease_until"))
        batch.drop_column("lease_until")
