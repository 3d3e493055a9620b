"""API keys of the HTTP API: created, verified and revoked per tenant.

API keys are shown once, at creation; the catalog keeps only their SHA-256, so a leaked database
does not leak usable keys. A key is `ulpt_<12 hex id>_<secret>`: the id finds the row without a scan,
the hash comparison is constant-time. Every query that names a key also names its tenant, so a key id
of another tenant reads exactly like one that does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ulpt.catalog.models import SCOPES, ApiKeyRow, utcnow
from ulpt.catalog.names import check_name
from ulpt.catalog.tenants import ensure_tenant
from ulpt.errors import NotFoundError, SpecError

_KEY = re.compile(r"ulpt_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}")
_KEY_ID = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key; `key` is the only time the plaintext exists outside the caller."""

    id: str
    tenant: str
    key: str
    label: str | None = None
    scopes: tuple[str, ...] = SCOPES

    def __repr__(self) -> str:  # never print the secret by accident
        return (
            f"NewApiKey(id={self.id!r}, tenant={self.tenant!r}, label={self.label!r}, scopes={self.scopes!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """What `ulpt keys create --json` and the control plane answer: the key, this once, and its prefix."""
        return {
            "id": self.id,
            "prefix": f"ulpt_{self.id}_",
            "name": self.label,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "key": self.key,
        }


@dataclass(frozen=True)
class KeyIdentity:
    """Who an accepted key speaks for and what it may do; holds no secret."""

    key_id: str
    tenant: str
    scopes: frozenset[str]


def check_scopes(scopes: object) -> tuple[str, ...]:
    """Known scopes in their canonical order; refuses an empty or unknown one (naming the known)."""
    if isinstance(scopes, str) or not scopes:
        raise SpecError(f"scopes: give one or more of {', '.join(SCOPES)}")
    given = list(scopes)  # type: ignore[call-overload]
    unknown = [s for s in given if s not in SCOPES]
    if unknown:
        raise SpecError(f"scopes: unknown scope {str(unknown[0])[:32]!r}; known: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in given)


def scopes_of(row: ApiKeyRow) -> tuple[str, ...]:
    return tuple(s for s in row.scopes.split(",") if s in SCOPES)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    session: Session, tenant: str, label: str | None = None, scopes: tuple[str, ...] | list[str] = SCOPES
) -> NewApiKey:
    """A new key for `tenant` (created if needed); store its plaintext now, it cannot be recovered."""
    if label is not None:
        check_name(label, "API key name")
    granted = check_scopes(scopes)
    ensure_tenant(session, tenant)
    key_id = secrets.token_hex(6)
    key = f"ulpt_{key_id}_{secrets.token_urlsafe(32)}"
    session.add(
        ApiKeyRow(id=key_id, tenant=tenant, key_hash=_hash(key), label=label, scopes=",".join(granted))
    )
    session.flush()
    return NewApiKey(id=key_id, tenant=tenant, key=key, label=label, scopes=granted)


def identify_api_key(session: Session, key: str) -> KeyIdentity | None:
    """The tenant and scopes of a key, or None for a malformed, unknown or revoked key."""
    match = _KEY.fullmatch(key or "")
    if match is None:
        return None
    row = session.get(ApiKeyRow, match.group(1))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, _hash(key)):
        return None
    return KeyIdentity(row.id, row.tenant, frozenset(scopes_of(row)))


def verify_api_key(session: Session, key: str) -> str | None:
    """The tenant a key belongs to, or None for a malformed, unknown or revoked key."""
    identity = identify_api_key(session, key)
    return identity.tenant if identity is not None else None


def revoke_api_key(session: Session, tenant: str, key_id: str) -> ApiKeyRow:
    """Revoke `tenant`'s key `key_id` (again is a no-op); the row stays, so `list` shows when it was revoked.

    Another tenant's key id is "not found", the same as an unknown one. A malformed id is refused
    without being repeated: a whole key pasted in its place must not end up in a terminal or a log.
    """
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise SpecError("an API key id is 12 hex digits, the part after ulpt_ (see `ulpt keys list`)")
    session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.id == key_id, ApiKeyRow.tenant == tenant, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    row = session.scalars(
        select(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.tenant == tenant)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no API key with id {key_id!r} in tenant {tenant!r}")
    return row


def list_api_keys(session: Session, tenant: str) -> list[ApiKeyRow]:
    """`tenant`'s keys, oldest first, revoked ones included (their rows hold hashes, never a key)."""
    return list(
        session.scalars(
            select(ApiKeyRow).where(ApiKeyRow.tenant == tenant).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        )
    )
