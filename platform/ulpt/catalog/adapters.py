"""Adapter rows: insert, resolve a reference, aliases, tombstones, and the blob references gc needs.

Every function takes a Session and leaves the transaction to the caller, so the registration
protocol can put tenant, base model, version numbers and all inserted rows in ONE transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, and_, any_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from ulpt.catalog.copy import bulk_insert
from ulpt.catalog.models import AdapterRow, AliasRow, Base, utcnow
from ulpt.catalog.names import Ref, check_name, numeric_metrics, parse_ref
from ulpt.errors import ConflictError, NotFoundError

_CHUNK = 500  # placeholders per IN list on SQLite
_TABLES = Base.metadata.tables


def _in(session: Session, column: Any, values: Iterable[Any]) -> Iterator[ColumnElement[bool]]:
    """`column IN values` as few conditions as possible: ONE array parameter on PostgreSQL (planned once,
    ~10x faster than hundreds of placeholders), chunks of at most 500 placeholders on SQLite."""
    items = sorted(set(values))
    if not items:
        return
    if session.get_bind().dialect.name == "postgresql":
        yield column == any_(literal(items, ARRAY(column.type)))
        return
    for start in range(0, len(items), _CHUNK):
        yield column.in_(items[start : start + _CHUNK])


_MAX_NAME_LOCKS = 128
"""Names one registration locks one by one; above, it locks the whole tenant. The server's lock table is
shared (max_locks_per_transaction x max_connections, 6,400 by default), so 16 concurrent workers at this
bound hold at most 2,048 of its entries."""


def _lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for a tenant or a (tenant, name)."""
    digest = hashlib.sha256("\0".join(("ulpt-versions", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_names(session: Session, tenant: str, names: Iterable[str]) -> None:
    """Serialize version numbering of `names` until commit, so concurrent writers never pick the same number.

    PostgreSQL: a shared tenant lock plus one advisory lock per name, all taken by ONE statement in sorted
    key order (no deadlocks, one round trip); so concurrent workers registering different names of one
    tenant never wait for each other. A batch of more than `_MAX_NAME_LOCKS` names takes the tenant lock
    exclusively instead. SQLite needs nothing: the registration transaction starts with a write, which
    takes SQLite's single writer lock.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    unique = sorted(set(names))
    if not unique:
        return
    tenant_key = _lock_key(tenant)
    if len(unique) > _MAX_NAME_LOCKS:
        session.execute(select(func.pg_advisory_xact_lock(tenant_key)))
        return
    session.execute(select(func.pg_advisory_xact_lock_shared(tenant_key)))
    keys = sorted(_lock_key(tenant, name) for name in unique)
    listed = (
        func.unnest(literal(keys, ARRAY(BigInteger)))
        .table_valued("key", with_ordinality="position")
        .render_derived()
    )
    # ORDER BY: PostgreSQL evaluates a volatile function in the select list after sorting, so the locks
    # are taken in key order, the same order every writer uses.
    session.execute(select(func.pg_advisory_xact_lock(listed.c.key)).order_by(listed.c.position))


def max_versions(session: Session, tenant: str, names: Iterable[str]) -> dict[str, int]:
    """Highest version ever used per name, tombstones included, so a version number is never reused."""
    out: dict[str, int] = {}
    for condition in _in(session, AdapterRow.name, names):
        rows = session.execute(
            select(AdapterRow.name, func.max(AdapterRow.version))
            .where(AdapterRow.tenant == tenant, condition)
            .group_by(AdapterRow.name)
        )
        out.update({name: version for name, version in rows})
    return out


def existing_versions(
    session: Session, tenant: str, pairs: Iterable[tuple[str, int]]
) -> set[tuple[str, int]]:
    wanted = set(pairs)
    found: set[tuple[str, int]] = set()
    for condition in _in(session, AdapterRow.name, [name for name, _ in wanted]):
        rows = session.execute(
            select(AdapterRow.name, AdapterRow.version).where(AdapterRow.tenant == tenant, condition)
        )
        found.update((name, version) for name, version in rows if (name, version) in wanted)
    return found


def alias_names(session: Session, tenant: str, names: Iterable[str]) -> set[str]:
    """Which of `names` are aliases in `tenant` (an adapter may not take an alias's name, nor the reverse)."""
    found: set[str] = set()
    for condition in _in(session, AliasRow.alias, names):
        found.update(session.scalars(select(AliasRow.alias).where(AliasRow.tenant == tenant, condition)))
    return found


def insert_adapters(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Bulk-insert complete adapter rows plus their tag and metric index rows, in the caller's transaction.

    PostgreSQL: one COPY per table (`bulk_insert`), ~5x fewer server and driver cycles per row than
    an executemany of INSERTs. SQLite: one executemany per table. Core inserts on the tables, not ORM
    bulk inserts: rows are complete dicts, and skipping the ORM's per-row bookkeeping doubles the rate.
    """
    if not rows:
        return
    bulk_insert(session, _TABLES["adapters"], [dict(row) for row in rows])
    tags = [
        {"adapter_id": row["id"], "key": key, "value": value}
        for row in rows
        for key, value in row.get("tags", {}).items()
    ]
    metrics = [
        {"adapter_id": row["id"], "name": name, "value": value, "tenant": row["tenant"]}
        for row in rows
        for name, value in numeric_metrics(row.get("metrics", {})).items()
    ]
    bulk_insert(session, _TABLES["adapter_tags"], tags)
    bulk_insert(session, _TABLES["adapter_metrics"], metrics)


def get_by_id(session: Session, adapter_id: uuid.UUID) -> AdapterRow | None:
    return session.get(AdapterRow, adapter_id)


def resolve(session: Session, tenant: str, ref: str | Ref, *, include_deleted: bool = False) -> AdapterRow:
    """The adapter `ref` names for `tenant`: NAME:VERSION exactly, else an alias, else NAME's latest version.

    `OTHER/NAME...` reaches another tenant's adapter only if it is public, and only by its name:
    aliases are the owner's private names, never resolved for another tenant. Anything else reads
    as "not found", so a reference never reveals that a private adapter or an alias exists.
    """
    parsed = ref if isinstance(ref, Ref) else parse_ref(ref)
    owner = parsed.tenant or tenant
    foreign = owner != tenant
    shown = str(parsed)
    missing = NotFoundError(f"no adapter or alias named {shown!r} in tenant {tenant!r}")
    base = select(AdapterRow).where(AdapterRow.tenant == owner)
    if foreign:
        base = base.where(AdapterRow.public.is_(True))
    if parsed.version is not None:
        row = session.scalars(
            base.where(AdapterRow.name == parsed.name, AdapterRow.version == parsed.version)
        ).first()
        if row is None:
            raise NotFoundError(f"no adapter {shown!r} in tenant {tenant!r}")
        if row.deleted_at is not None and not include_deleted:
            raise NotFoundError(f"adapter {shown!r} was deleted")
        return row
    alias_target = (
        select(AliasRow.adapter_id)
        .where(AliasRow.tenant == owner, AliasRow.alias == parsed.name)
        .scalar_subquery()
    )
    named = AdapterRow.name == parsed.name
    if not include_deleted:
        named = and_(named, AdapterRow.deleted_at.is_(None))
    order: tuple[Any, ...]
    if foreign:
        candidates = base.where(named)
        order = (AdapterRow.version.desc(),)
    elif session.get_bind().dialect.name == "postgresql":
        # One round trip: the alias's target if NAME is an alias, else NAME's latest version. An alias
        # never shares a name with an adapter, so ordering by "name = NAME" puts the alias's target first.
        candidates = base.where(or_(AdapterRow.id == alias_target, named))
        order = (AdapterRow.name == parsed.name, AdapterRow.version.desc())
    else:  # SQLite cannot use two indexes for an OR (it scans the tenant); two lookups cost microseconds
        target = session.scalar(select(alias_target))
        candidates = base.where(AdapterRow.id == target) if target is not None else base.where(named)
        order = (AdapterRow.version.desc(),)
    row = session.scalars(candidates.order_by(*order).limit(1)).first()
    if row is not None:
        return row
    if not foreign and session.scalar(
        select(AdapterRow.id).where(AdapterRow.tenant == owner, AdapterRow.name == parsed.name).limit(1)
    ):
        raise NotFoundError(f"every version of adapter {shown!r} was deleted")
    raise missing


def versions_of(session: Session, tenant: str, name: str) -> list[AdapterRow]:
    return list(
        session.scalars(
            select(AdapterRow)
            .where(AdapterRow.tenant == tenant, AdapterRow.name == name)
            .order_by(AdapterRow.version)
        )
    )


def children_of(session: Session, adapter_id: uuid.UUID) -> list[AdapterRow]:
    return list(
        session.scalars(
            select(AdapterRow).where(AdapterRow.parent_id == adapter_id).order_by(AdapterRow.created_at)
        )
    )


# ---- aliases -----------------------------------------------------------------------------------


def set_alias(session: Session, tenant: str, alias: str, target: AdapterRow) -> uuid.UUID | None:
    """Point `alias` at `target` (create or move); returns the previous target's id."""
    check_name(alias, "alias")
    if target.tenant != tenant:
        raise ConflictError(f"alias {alias!r} must point at an adapter of tenant {tenant!r}")
    if target.deleted_at is not None:
        raise ConflictError(f"cannot point alias {alias!r} at deleted adapter {target.name}:{target.version}")
    if session.scalar(
        select(AdapterRow.id).where(AdapterRow.tenant == tenant, AdapterRow.name == alias).limit(1)
    ):
        raise ConflictError(f"{alias!r} is already an adapter name in tenant {tenant!r}; pick another alias")
    row = session.get(AliasRow, (tenant, alias), with_for_update=True)
    if row is None:
        session.add(AliasRow(tenant=tenant, alias=alias, adapter_id=target.id))
        session.flush()
        return None
    previous = row.adapter_id
    if previous != target.id:
        row.previous_adapter_id = previous
        row.adapter_id = target.id
        row.updated_at = utcnow()
    session.flush()
    return previous


def rollback_alias(session: Session, tenant: str, alias: str) -> tuple[AdapterRow, uuid.UUID]:
    """Move `alias` back to its previous target; returns (new target, id of the one it replaced).

    The replaced target becomes the new "previous", so a second rollback undoes the first.
    """
    row = session.get(AliasRow, (tenant, alias), with_for_update=True)
    if row is None:
        raise NotFoundError(f"no alias named {alias!r} in tenant {tenant!r}")
    if row.previous_adapter_id is None:
        raise ConflictError(f"alias {alias!r} has no previous target to roll back to")
    previous = session.get(AdapterRow, row.previous_adapter_id)
    if previous is None or previous.deleted_at is not None:
        raise ConflictError(f"the previous target of alias {alias!r} was deleted; set the alias explicitly")
    replaced = row.adapter_id
    row.previous_adapter_id, row.adapter_id = replaced, previous.id
    row.updated_at = utcnow()
    session.flush()
    return previous, replaced


def remove_alias(session: Session, tenant: str, alias: str) -> None:
    row = session.get(AliasRow, (tenant, alias))
    if row is None:
        raise NotFoundError(f"no alias named {alias!r} in tenant {tenant!r}")
    session.delete(row)
    session.flush()


def list_aliases(session: Session, tenant: str) -> list[tuple[AliasRow, AdapterRow]]:
    rows = session.execute(
        select(AliasRow, AdapterRow)
        .join(AdapterRow, AdapterRow.id == AliasRow.adapter_id)
        .where(AliasRow.tenant == tenant)
        .order_by(AliasRow.alias)
    )
    return [(alias, adapter) for alias, adapter in rows]


def aliases_of(session: Session, adapter_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    out: dict[uuid.UUID, list[str]] = {}
    for condition in _in(session, AliasRow.adapter_id, adapter_ids):
        rows = session.execute(
            select(AliasRow.adapter_id, AliasRow.alias).where(condition).order_by(AliasRow.alias)
        )
        for adapter_id, alias in rows:
            out.setdefault(adapter_id, []).append(alias)
    return out


# ---- deletion and garbage collection ----------------------------------------------------------


def tombstone(session: Session, rows: Sequence[AdapterRow], *, drop_aliases: bool = False) -> None:
    """Mark adapters deleted; refused while an alias points at one unless `drop_aliases`."""
    ids = [row.id for row in rows if row.deleted_at is None]
    if not ids:
        return
    pointing = aliases_of(session, ids)
    if pointing and not drop_aliases:
        by_id = {row.id: row for row in rows}
        adapter_id, names = next(iter(pointing.items()))
        row = by_id[adapter_id]
        raise ConflictError(
            f"alias {names[0]!r} points at {row.name}:{row.version}: move or remove it first (or use --force)"
        )
    if pointing:
        for condition in _in(session, AliasRow.adapter_id, ids):
            for alias in session.scalars(select(AliasRow).where(condition)):
                session.delete(alias)
        session.flush()
    for condition in _in(session, AdapterRow.id, ids):
        session.execute(
            update(AdapterRow)
            .where(condition, AdapterRow.deleted_at.is_(None))
            .values(deleted_at=utcnow(), status="deleted")
            .execution_options(synchronize_session=False)
        )
    session.flush()


def blob_references(session: Session, keys: Sequence[str]) -> tuple[set[str], set[str]]:
    """(keys some live row references, keys only tombstoned rows reference)."""
    live: set[str] = set()
    dead: set[str] = set()
    for condition in _in(session, AdapterRow.blob_key, keys):
        rows = session.execute(select(AdapterRow.blob_key, AdapterRow.deleted_at.is_(None)).where(condition))
        for key, is_live in rows:
            (live if is_live else dead).add(key)
    return live, dead - live
