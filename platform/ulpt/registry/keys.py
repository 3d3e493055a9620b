"""API keys -> who is calling: the check every HTTP application (serving, control plane) shares.

Keys are stored and compared as SHA-256 hashes (`ulpt.catalog.api_keys`). An accepted key is looked
up again on every request (one primary-key read), so a revoked key is refused from the next request
on, by every replica: remembering acceptances even for seconds kept revoked keys working. Refusals
are remembered for a TTL, so a flood of bad keys costs one query each per TTL (a refused key never
becomes valid: keys are random and new ones are new strings). Only a hash of a key is kept in
memory; keys are never logged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from ulpt.catalog.api_keys import KeyIdentity

if TYPE_CHECKING:
    from ulpt.registry.api import Registry

V = TypeVar("V")

__all__ = ["Authenticator", "KeyIdentity", "TtlCache"]


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
    """Bearer key -> tenant (and scopes), or None for a missing, malformed, unknown or revoked key.

    Only refusals are cached (`refusal_ttl_s`); an accepted key is verified against the catalog on each
    call, so revocation is effective on the next request.
    """

    def __init__(self, registry: Registry, refusal_ttl_s: float) -> None:
        self._registry = registry
        self._refused: TtlCache[None] = TtlCache(refusal_ttl_s)

    def identity_for(self, key: str) -> KeyIdentity | None:
        digest = hashlib.sha256(key.encode()).digest()
        if self._refused.get(digest)[0]:
            return None
        identity = self._registry.identity_for_key(key)
        if identity is None:
            self._refused.put(digest, None)
        return identity

    def tenant_for(self, key: str) -> str | None:
        identity = self.identity_for(key)
        return identity.tenant if identity is not None else None
