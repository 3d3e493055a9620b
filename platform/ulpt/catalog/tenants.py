"""Tenants: the owners every adapter, job and API key row points to.

Base models live in `base_models`, API keys in `api_keys`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ulpt.catalog.models import TenantRow
from ulpt.catalog.names import check_tenant
from ulpt.errors import SpecError


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT with the dialect's ON CONFLICT support (both SQLite and PostgreSQL have it)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def ensure_tenant(session: Session, tenant: str) -> None:
    """Create the tenant row if it does not exist (concurrent callers are fine)."""
    check_tenant(tenant)
    session.execute(dialect_insert(session, TenantRow).values(name=tenant).on_conflict_do_nothing())


def list_tenants(session: Session) -> list[TenantRow]:
    return list(session.scalars(select(TenantRow).order_by(TenantRow.name)))


MAX_WEIGHT = 1e6


def set_tenant_weight(session: Session, tenant: str, weight: float) -> None:
    """The tenant's share of a trainer pool against the others' (1 by default): a tenant of weight 2
    gets twice the running fits of a tenant of weight 1 when both have fits waiting."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= MAX_WEIGHT:
        raise SpecError(f"tenant weight must be a number above 0 and at most {MAX_WEIGHT:g}, got {weight!r}")
    ensure_tenant(session, tenant)
    session.execute(update(TenantRow).where(TenantRow.name == tenant).values(weight=float(weight)))
