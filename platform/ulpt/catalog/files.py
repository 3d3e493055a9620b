"""Files a tenant uploaded over HTTP: rows in `files`, bytes as content-addressed blobs in the store.

Every query names the tenant, so another tenant's file id reads exactly like one that does not
exist. Deleting stamps `deleted_at`; `ulpt gc` then frees the blob once no live file or adapter needs it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ulpt.catalog.models import FileRow, utcnow
from ulpt.catalog.tenants import ensure_tenant
from ulpt.errors import NotFoundError, SpecError

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
"""What a file id looks like; anything else is refused before a query (and never echoed in full)."""


def check_file_id(file_id: str) -> str:
    if not isinstance(file_id, str) or FILE_ID.fullmatch(file_id) is None:
        raise SpecError("a file id is file- and 24 hex digits (as returned by the upload)")
    return file_id


def add_file(
    session: Session,
    tenant: str,
    *,
    filename: str,
    purpose: str,
    size: int,
    blob_key: str,
    sha256: str,
    rows: int,
) -> FileRow:
    ensure_tenant(session, tenant)
    row = FileRow(
        id=f"file-{secrets.token_hex(12)}",
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        size=size,
        blob_key=blob_key,
        sha256=sha256,
        rows=rows,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, tenant: str, file_id: str) -> FileRow:
    row = session.get(FileRow, check_file_id(file_id))
    if row is None or row.tenant != tenant or row.deleted_at is not None:
        raise NotFoundError(f"no file {file_id}")
    return row


def list_files(
    session: Session, tenant: str, *, purpose: str | None = None, limit: int = 100, after: str | None = None
) -> list[FileRow]:
    """The tenant's live files, newest first; `after`: those listed after that file of the tenant's
    (the last id of the previous page), so every file can be reached, page by page."""
    query = select(FileRow).where(FileRow.tenant == tenant, FileRow.deleted_at.is_(None))
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    if after is not None:
        last = get_file(session, tenant, after)
        query = query.where(
            or_(
                FileRow.created_at < last.created_at,
                and_(FileRow.created_at == last.created_at, FileRow.id > last.id),
            )
        )
    return list(session.scalars(query.order_by(FileRow.created_at.desc(), FileRow.id).limit(limit)))


def file_usage(session: Session, tenant: str) -> tuple[int, int]:
    """(live files, their bytes) of the tenant: what its upload limits count."""
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(FileRow.size), 0)).where(
            FileRow.tenant == tenant, FileRow.deleted_at.is_(None)
        )
    ).one()
    return int(count), int(size)


def delete_file(session: Session, tenant: str, file_id: str) -> FileRow:
    row = get_file(session, tenant, file_id)
    row.deleted_at = utcnow()
    return row


def live_file_blobs(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of these blob keys a live uploaded file still names (garbage collection keeps them)."""
    wanted = list(keys)
    if not wanted:
        return set()
    found = session.scalars(
        select(FileRow.blob_key).where(FileRow.blob_key.in_(wanted), FileRow.deleted_at.is_(None))
    )
    return set(found)
