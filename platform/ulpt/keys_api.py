"""`client.keys`: the API keys of the client's tenant, which the HTTP API accepts as that tenant.

The tenant is the client's identity, never an argument: a client creates, lists and revokes only its
own tenant's keys, and another tenant's key id reads as "not found". A key's plaintext exists once,
in the `NewApiKey` that `create` returns; what `list` returns (`ApiKeyInfo`) cannot carry it or its
hash, so printing or serializing a listing never exposes a usable key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ulpt.catalog import Catalog, NewApiKey
from ulpt.catalog.api_keys import create_api_key, list_api_keys, revoke_api_key, scopes_of
from ulpt.catalog.models import SCOPES, ApiKeyRow

__all__ = ["ApiKeyInfo", "Keys"]


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: its id (the public part of the key), name and life span."""

    id: str
    tenant: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    scopes: tuple[str, ...] = SCOPES

    @property
    def prefix(self) -> str:
        """The start of the key itself (`ulpt_<id>_`), to tell which key a deployment holds."""
        return f"ulpt_{self.id}_"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKeyInfo:
        return cls(row.id, row.tenant, row.label, row.created_at, row.revoked_at, scopes_of(row))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "name": self.name,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


class Keys:
    """Create, list and revoke the API keys of one tenant."""

    def __init__(self, catalog: Catalog, tenant: str) -> None:
        self._catalog = catalog
        self.tenant = tenant

    def create(self, name: str | None = None, scopes: tuple[str, ...] | list[str] = SCOPES) -> NewApiKey:
        """A new key with `scopes` (read, train, admin; all by default); its plaintext (`.key`) is
        returned only this once and is not stored anywhere."""
        with self._catalog.session() as session:
            return create_api_key(session, self.tenant, name, scopes)

    def list(self) -> list[ApiKeyInfo]:
        """Every key of the tenant, oldest first, revoked ones included (with when)."""
        with self._catalog.read() as session:
            return [ApiKeyInfo.from_row(row) for row in list_api_keys(session, self.tenant)]

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Stop the key `key_id` from authenticating; NotFoundError when the tenant has no such key."""
        with self._catalog.session() as session:
            return ApiKeyInfo.from_row(revoke_api_key(session, self.tenant, key_id))
