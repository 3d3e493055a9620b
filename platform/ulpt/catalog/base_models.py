"""Base models: the anchor every adapter row points to, recorded on first use with its hidden size.

An adapter's prompt is only meaningful on a base model of the same hidden size, so the first adapter
of a base model records it and every later one must agree.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ulpt.catalog.models import BaseModelRow
from ulpt.catalog.tenants import dialect_insert
from ulpt.errors import ConflictError, NotFoundError, SpecError


def ensure_base_model(
    session: Session, name: str, hidden_size: int, *, revision: str | None = None, family: str | None = None
) -> BaseModelRow:
    """The base model row for `name`, created on first use; refuses a hidden size that disagrees with it."""
    if not isinstance(name, str) or not name.strip() or len(name) > 512:
        raise SpecError(f"base_model must be a non-empty name of at most 512 characters, got {name!r}")
    session.execute(
        dialect_insert(session, BaseModelRow)
        .values(name=name, hidden_size=hidden_size, revision=revision, family=family)
        .on_conflict_do_nothing()
    )
    row = session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)).one()
    if row.hidden_size != hidden_size:
        raise ConflictError(
            f"adapter hidden size {hidden_size} does not match base model {name!r} (hidden {row.hidden_size})"
        )
    if revision is not None and row.revision is not None and row.revision != revision:
        raise ConflictError(f"base model {name!r} is recorded at revision {row.revision}, not {revision}")
    return row


def get_base_model(session: Session, name: str) -> BaseModelRow:
    row = session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)).one_or_none()
    if row is None:
        raise NotFoundError(f"no base model named {name!r} in the catalog")
    return row
