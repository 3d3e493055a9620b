"""Who is calling and what their `model` means: API keys -> tenant, references -> catalog records.

Both answers come from the catalog through the registry. Keys are checked by the core's
`ulpt.registry.keys.Authenticator`, which the control plane shares (revocation effective on the next
request, refusals cached). Resolved references are remembered for a short TTL, so a moved alias
applies within it.
"""

from __future__ import annotations

from ulpt.errors import NotFoundError, SpecError
from ulpt.registry import AdapterRecord, Registry
from ulpt.registry.keys import Authenticator, TtlCache

__all__ = ["Authenticator", "Resolver", "TtlCache"]


class Resolver:
    """(tenant, reference) -> the adapter record it names, with the catalog's visibility rules.

    A reference is `name`, `name:version`, an alias, or `owner/name...` for another tenant's public
    adapter; anything the tenant may not see reads exactly like something that does not exist.
    """

    def __init__(self, registry: Registry, ttl_s: float) -> None:
        self._registry = registry
        self._cache: TtlCache[AdapterRecord | None] = TtlCache(ttl_s)

    def resolve(self, tenant: str, ref: str) -> AdapterRecord | None:
        """The record, or None when there is no such adapter visible to `tenant`."""
        key = (tenant, ref)
        found, cached = self._cache.get(key)
        if found:
            return cached
        try:
            record: AdapterRecord | None = self._registry.get(ref, tenant=tenant)
        except (NotFoundError, SpecError):  # SpecError: a malformed reference names nothing
            record = None
        if record is not None and record.status != "ready":
            record = None
        self._cache.put(key, record)
        return record
