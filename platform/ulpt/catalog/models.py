"""The catalog schema: SQLAlchemy 2.0 typed models, the single source Alembic migrations are checked against.

Adapters are immutable once registered; their `tags` and `metrics` JSON columns are what readers get,
and the `adapter_tags` / `adapter_metrics` tables (written in the same transaction) index the same
values so that `find` can filter on tags and filter or sort on a metric with an index at 1M rows.
Deleting an adapter only stamps `deleted_at` (a tombstone kept for lineage and so a version number is
never reused); `ulpt gc` then removes the blob once no live row needs it.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ADAPTER_STATUSES = ("ready", "deleted")
SCOPES = ("read", "train", "admin")
ALL_SCOPES = ",".join(SCOPES)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_id_lock = threading.Lock()
_id_state = [0, 0]  # last millisecond, counter


def new_id() -> uuid.UUID:
    """A UUIDv7: a millisecond time prefix, then a counter, then random bits.

    Unique like a v4, but ids made by one process sort in creation order, so inserts append to
    the primary-key index and "oldest first" needs no extra column.
    """
    with _id_lock:
        now = time.time_ns() // 1_000_000
        if now > _id_state[0]:
            _id_state[0], _id_state[1] = now, int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _id_state[1] += 1
            if _id_state[1] > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _id_state[0], _id_state[1] = _id_state[0] + 1, 0
        millis, counter = _id_state
    value = millis << 80 | 0x7 << 76 | counter << 64 | 0x2 << 62 | int.from_bytes(os.urandom(8), "big") >> 2
    return uuid.UUID(int=value)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones and returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("catalog timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
"""JSON (JSONB on PostgreSQL); Python None is stored as SQL NULL, not as a JSON null."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


def _created() -> Any:
    return mapped_column(default=utcnow, server_default=func.now())


class TenantRow(Base):
    """An isolation boundary: adapters, aliases, jobs and API keys belong to exactly one tenant."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    """The tenant's share of a trainer pool against other tenants' (positive; migration 0006)."""
    max_pending_fits: Mapped[int | None] = mapped_column(Integer)
    """Quota: fits of its open jobs waiting to train, the new job's included (None: no limit)."""
    max_job_row_steps: Mapped[int | None] = mapped_column(BigInteger)
    """Quota: one job's training work, rows x steps summed over its fits (None: no limit)."""
    created_at: Mapped[datetime] = _created()


class BaseModelRow(Base):
    """A frozen base model adapters are trained for; `hidden_size` must match every adapter's."""

    __tablename__ = "base_models"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    revision: Mapped[str | None] = mapped_column(String(128))
    """Revision or fingerprint of the weights, when known."""
    hidden_size: Mapped[int] = mapped_column(Integer)
    family: Mapped[str | None] = mapped_column(String(64))
    """Architecture family, e.g. llama or t5."""
    created_at: Mapped[datetime] = _created()


class JobRow(Base):
    """A bulk training job: one spec, many fits.

    `status` only ever changes through `ulpt.catalog.lifecycle` (its values and moves live there).
    A running job has one driver, named in `driver`, which renews `heartbeat_at`; `attempt` counts the
    drivers that claimed it (migration 0005 took the three out of `timings` so claims and liveness are
    one indexed query, not a scan of JSON).
    """

    __tablename__ = "jobs"
    __table_args__ = (Index(None, "tenant", "created_at"), Index(None, "status", "heartbeat_at"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"))
    name: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    n_fits: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    """Where the job's time went (durations, worker clock stamps, its Ray submission); no state."""
    driver: Mapped[str | None] = mapped_column(String(128))
    """The process that claimed the job last (host:pid:token); kept after it ends, for the record."""
    heartbeat_at: Mapped[datetime | None]
    """Renewed by the running job's driver; None once the job ends. Stale: the driver is gone."""
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How many times a driver claimed the job (1 for a job run once)."""
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Within its tenant, a pool claims the fits of higher-priority jobs first (migration 0006)."""
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class AdapterRow(Base):
    """One registered adapter version: the DESIGN section 4 fields plus lineage, tombstone and visibility."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("tenant", "name", "version"),
        Index(None, "tenant", "created_at", "id"),
        Index(None, "blob_key"),
        Index(None, "job_id"),
        Index(None, "parent_id"),
        Index(None, "public", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    method: Mapped[str] = mapped_column(String(16))
    base_model: Mapped[str] = mapped_column(ForeignKey("base_models.name"))
    hidden_size: Mapped[int] = mapped_column(Integer)
    n_tokens: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    generator: Mapped[str | None] = mapped_column(String(64))
    generator_version: Mapped[int | None] = mapped_column(Integer)
    projection: Mapped[str | None] = mapped_column(String(32))
    """Distribution of the frozen projection (xavier_uniform, normal); None for methods without one."""
    projection_fingerprint: Mapped[str | None] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The adapter's own config (adapter_config.json), as stored in the blob."""
    blob_key: Mapped[str] = mapped_column(String(128))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    blob_size: Mapped[int] = mapped_column(BigInteger)
    num_trainable_params: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(128))
    training_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("adapters.id", ondelete="SET NULL"))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    """Visible (read-only) to every tenant, e.g. as `tenant/name:version`."""
    created_at: Mapped[datetime] = _created()
    deleted_at: Mapped[datetime | None]


class AdapterTagRow(Base):
    """Index of `adapters.tags` for all-of tag filters (bare tags have the value '').

    `find` probes the primary key per candidate adapter, or drives from (key, value) when a tag is rare.
    """

    __tablename__ = "adapter_tags"
    __table_args__ = (Index(None, "key", "value", "adapter_id"),)

    adapter_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    """No foreign key: written only with the adapter, in its transaction (see migration 0004)."""
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")


class AdapterMetricRow(Base):
    """Index of the numeric entries of `adapters.metrics`, to filter and sort on a metric."""

    __tablename__ = "adapter_metrics"
    __table_args__ = (Index(None, "tenant", "name", "value", "adapter_id"),)

    adapter_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    """No foreign key: written only with the adapter, in its transaction (see migration 0004)."""
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    tenant: Mapped[str] = mapped_column(String(64))


class AliasRow(Base):
    """A movable name for one adapter version, for promotion (`prod` -> user-42:3) and rollback."""

    __tablename__ = "aliases"
    __table_args__ = (
        ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        ForeignKeyConstraint(["previous_adapter_id"], ["adapters.id"], ondelete="SET NULL"),
        Index(None, "adapter_id"),
    )

    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    adapter_id: Mapped[uuid.UUID]
    previous_adapter_id: Mapped[uuid.UUID | None]
    """The target before the last move: what `rollback` restores."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, server_default=func.now())


class FitRow(Base):
    """One adapter to train inside a job; its status survives worker deaths so a job can resume."""

    __tablename__ = "fits"
    __table_args__ = (
        UniqueConstraint("job_id", "key"),
        Index(None, "job_id", "status"),
        Index(None, "status", "lease_until"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(256))
    """The fit's identity within its job, e.g. a user id."""
    status: Mapped[str] = mapped_column(String(16))
    """Changed only through `ulpt.catalog.lifecycle`."""
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    """Per-fit overrides of the job spec."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    adapter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("adapters.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    checkpoint: Mapped[str | None] = mapped_column(String(128))
    """Store key of the fit's last mid-fit checkpoint (one blob per worker's pack); None once it ends."""
    lease_until: Mapped[datetime | None]
    """Until when a pool member holds this running fit (renewed as it trains); past it, the fit goes back
    to pending from its checkpoint. None outside pools and once the fit leaves running."""
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PoolMemberRow(Base):
    """A trainer pool member as it last reported itself (every half second while it runs; migration
    0006). A member that stops deletes its row; one whose heartbeat is old died (its fits' leases say
    the same and are requeued)."""

    __tablename__ = "pool_members"
    __table_args__ = (Index(None, "pool", "heartbeat_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The member's name, as it claims fits (the `worker` of its running fits)."""
    pool: Mapped[str] = mapped_column(String(128))
    """The pool's name (`PoolKey.name`)."""
    started_at: Mapped[datetime] = _created()
    heartbeat_at: Mapped[datetime]
    fits: Mapped[int] = mapped_column(Integer)
    """Fits it holds now."""
    steps: Mapped[int] = mapped_column(BigInteger)
    """Packed steps taken since it started."""
    fits_per_forward: Mapped[float] = mapped_column(Float)
    """Of its last step: fits trained / training forward passes (how well it packs)."""
    rows_per_forward: Mapped[float] = mapped_column(Float)


class ApiKeyRow(Base):
    """A tenant's API key, stored only as the SHA-256 of the full key; `id` is the key's public prefix."""

    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "tenant"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"))
    key_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(String(64), default=ALL_SCOPES, server_default=ALL_SCOPES)
    """What the key may do, comma-separated (`read`, `train`, `admin`); keys made before scopes have all."""
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None]


class FileRow(Base):
    """A data file a tenant uploaded over HTTP (training rows); its bytes are a blob in the store."""

    __tablename__ = "files"
    __table_args__ = (Index(None, "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"))
    filename: Mapped[str] = mapped_column(String(256))
    purpose: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()
    deleted_at: Mapped[datetime | None]
