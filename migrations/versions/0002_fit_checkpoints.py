"""Fits record the store key of their last mid-fit checkpoint, so a fit claimed again resumes from it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fits") as batch:
        batch.add_column(sa.Column("checkpoint", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fits") as batch:
        batch.drop_column("checkpoint")
