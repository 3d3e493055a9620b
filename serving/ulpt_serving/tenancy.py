"""Who is calling and what their `model` means: API keys -> tenant, references -> catalog records.

Both answers come from the catalog through the registry (keys are stored and compared as SHA-256
hashes, see `ulpt.catalog.api_keys`). An accepted key is looked up again on every request (one
primary-key read), so a revoked key is refused from the next request on, by every replica:
remembering acceptances even for seconds kept revoked keys working. Refusals are remembered for a
TTL, so a flood of bad keys costs one query each per TTL (a refused key never becomes valid: keys are
random and new ones are new strings). Resolved references are remembered for a short TTL, so a moved
alias applies within it.
Only a hash of a key is kept in memory; keys are never logged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from ulpt.errors import NotFoundError, SpecError
from ulpt.registry import AdapterRecord, Registry

V = TypeVar("V")


class TtlCache(Generic[V]):
    """A bounded map whose entries expire; thread-safe (handlers run lookups in worker threads)."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[object, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> tuple[bool, V | None]:
        """(True, value) while the entry lives, else (False, None)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return False, None
            if item[0] < self._clock():
                del self._items[key]
                return False, None
            self._items.move_to_end(key)
            return True, item[1]

    def put(self, key: object, value: V) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._items[key] = (self._clock() + self.ttl_s, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


class Authenticator:
    """Bearer key -> tenant, or None for a missing, malformed, unknown or revoked key.

    Only refusals are cached (`refusal_ttl_s`); an accepted key is verified against the catalog on each
    call, so revocation is effective on the next request.
    """

    def __init__(self, registry: Registry, refusal_ttl_s: float) -> None:
        self._registry = registry
        self._refused: TtlCache[None] = TtlCache(refusal_ttl_s)

    def tenant_for(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).digest()
        if self._refused.get(digest)[0]:
            return None
        tenant = self._registry.tenant_for_key(key)
        if tenant is None:
            self._refused.put(digest, None)
        return tenant


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
