"""Tag and metric index rows without a foreign key to their adapter.

`adapter_tags` and `adapter_metrics` are derived rows: only `insert_adapters` writes them, in the
transaction that inserts their adapter, and adapters are never deleted from the table (deletion sets
`deleted_at`), so the constraint checked something that cannot happen. It was not free: PostgreSQL
runs a foreign-key trigger for every index row, five per registered adapter, which was 40% of the
server's time in a bulk registration. Readers join these rows to `adapters`, so a row left behind
by hand is never returned.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX_TABLES = ("adapter_tags", "adapter_metrics")


def upgrade() -> None:
    for table in INDEX_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"fk_{table}_adapter_id_adapters"), type_="foreignkey")


def downgrade() -> None:
    for table in INDEX_TABLES:
        with op.batch_alter_table(table) as batch:
            name = op.f(f"fk_{table}_adapter_id_adapters")
            batch.create_foreign_key(name, "adapters", ["adapter_id"], ["id"], ondelete="CASCADE")
