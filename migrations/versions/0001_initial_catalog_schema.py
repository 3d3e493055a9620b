"""Initial catalog schema: tenants, base models, adapters (+ tag/metric indexes), aliases, jobs, fits, keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, *, created: bool = False) -> sa.Column:
    if created:
        return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), nullable=False),
        _time("created_at", created=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tenants")),
    )
    op.create_table(
        "base_models",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("revision", sa.String(128), nullable=True),
        sa.Column("hidden_size", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(64), nullable=True),
        _time("created_at", created=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("name", name=op.f("uq_base_models_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128), nullable=True),
        _time("created_at", created=True),
        _time("revoked_at"),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name=op.f("fk_api_keys_tenant_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_tenant"), "api_keys", ["tenant"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("n_fits", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("timings", _json(), nullable=True),
        _time("created_at", created=True),
        _time("started_at"),
        _time("finished_at"),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name=op.f("fk_jobs_tenant_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_tenant_created_at"), "jobs", ["tenant", "created_at"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("hidden_size", sa.Integer(), nullable=False),
        sa.Column("n_tokens", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("generator", sa.String(64), nullable=True),
        sa.Column("generator_version", sa.Integer(), nullable=True),
        sa.Column("projection", sa.String(32), nullable=True),
        sa.Column("projection_fingerprint", sa.String(128), nullable=True),
        sa.Column("config", _json(), nullable=False),
        sa.Column("blob_key", sa.String(128), nullable=False),
        sa.Column("blob_sha256", sa.String(64), nullable=False),
        sa.Column("blob_size", sa.BigInteger(), nullable=False),
        sa.Column("num_trainable_params", sa.BigInteger(), nullable=False),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(128), nullable=True),
        sa.Column("training_config", _json(), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        _time("created_at", created=True),
        _time("deleted_at"),
        sa.ForeignKeyConstraint(
            ["base_model"], ["base_models.name"], name=op.f("fk_adapters_base_model_base_models")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_adapters_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["adapters.id"], name=op.f("fk_adapters_parent_id_adapters"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name=op.f("fk_adapters_tenant_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("tenant", "name", "version", name=op.f("uq_adapters_tenant_name_version")),
    )
    op.create_index(op.f("ix_adapters_blob_key"), "adapters", ["blob_key"])
    op.create_index(op.f("ix_adapters_job_id"), "adapters", ["job_id"])
    op.create_index(op.f("ix_adapters_parent_id"), "adapters", ["parent_id"])
    op.create_index(op.f("ix_adapters_public_created_at"), "adapters", ["public", "created_at"])
    op.create_index(op.f("ix_adapters_tenant_created_at_id"), "adapters", ["tenant", "created_at", "id"])
    op.create_table(
        "adapter_metrics",
        sa.Column("adapter_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_adapter_metrics_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("adapter_id", "name", name=op.f("pk_adapter_metrics")),
    )
    op.create_index(
        op.f("ix_adapter_metrics_tenant_name_value_adapter_id"),
        "adapter_metrics",
        ["tenant", "name", "value", "adapter_id"],
    )
    op.create_table(
        "adapter_tags",
        sa.Column("adapter_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_adapter_tags_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("adapter_id", "key", name=op.f("pk_adapter_tags")),
    )
    op.create_index(
        op.f("ix_adapter_tags_key_value_adapter_id"), "adapter_tags", ["key", "value", "adapter_id"]
    )
    op.create_table(
        "aliases",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("alias", sa.String(128), nullable=False),
        sa.Column("adapter_id", sa.Uuid(), nullable=False),
        sa.Column("previous_adapter_id", sa.Uuid(), nullable=True),
        _time("updated_at", created=True),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_aliases_adapter_id_adapters")),
        sa.ForeignKeyConstraint(
            ["previous_adapter_id"],
            ["adapters.id"],
            name=op.f("fk_aliases_previous_adapter_id_adapters"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name=op.f("fk_aliases_tenant_tenants")),
        sa.PrimaryKeyConstraint("tenant", "alias", name=op.f("pk_aliases")),
    )
    op.create_index(op.f("ix_aliases_adapter_id"), "aliases", ["adapter_id"])
    op.create_table(
        "fits",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", _json(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("adapter_id", sa.Uuid(), nullable=True),
        sa.Column("metrics", _json(), nullable=True),
        sa.Column("timings", _json(), nullable=True),
        _time("created_at", created=True),
        _time("started_at"),
        _time("finished_at"),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_fits_adapter_id_adapters"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_fits_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fits")),
        sa.UniqueConstraint("job_id", "key", name=op.f("uq_fits_job_id_key")),
    )
    op.create_index(op.f("ix_fits_job_id_status"), "fits", ["job_id", "status"])


def downgrade() -> None:
    for table in (
        "fits",
        "aliases",
        "adapter_tags",
        "adapter_metrics",
        "adapters",
        "jobs",
        "api_keys",
        "base_models",
        "tenants",
    ):
        op.drop_table(table)
