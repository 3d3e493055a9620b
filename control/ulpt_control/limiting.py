"""Each tenant's share of a control-plane replica, enforced before a route runs (`ulpt_serving.limits`).

Counted per tenant, not per key, so that minting keys buys no more slots: the tenant of a Bearer key is
remembered for `auth_cache_ttl_s` (this is only for counting; the route still checks the key on every
request). Requests without a valid key share one anonymous share and then get the route's 401.
Event streams (`.../events`) also take a stream slot. Every request's body is read on a clock.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ulpt.errors import CatalogError
from ulpt.registry.keys import TtlCache
from ulpt_control.context import ControlContext
from ulpt_control.errors import ApiError, response
from ulpt_serving.limits import TooMany, timed_receive

ANONYMOUS = ""


class TenantLimitMiddleware:
    def __init__(self, app: ASGIApp, ctx: ControlContext) -> None:
        self.app = app
        self.ctx = ctx
        self._tenants: TtlCache[str | None] = TtlCache(ctx.config.auth_cache_ttl_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tenant = await self._tenant(scope)
        stream = str(scope.get("path", "")).endswith("/events")
        slots = self.ctx.slots
        try:
            slots.acquire(tenant, stream)
        except TooMany as exc:
            retry = str(slots.limits.retry_after_s)
            refusal = ApiError(429, str(exc), type="rate_limit_error", headers={"Retry-After": retry})
            await response(refusal)(scope, receive, send)
            return
        try:
            await self.app(scope, timed_receive(receive, slots.limits), send)
        finally:
            slots.release(tenant, stream)

    async def _tenant(self, scope: Scope) -> str:
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return ANONYMOUS
        digest = hashlib.sha256(key.encode()).digest()
        found, tenant = self._tenants.get(digest)
        if not found:
            tenant = await asyncio.to_thread(self._lookup, key)
            self._tenants.put(digest, tenant)
        return tenant or ANONYMOUS

    def _lookup(self, key: str) -> str | None:
        try:
            identity: Any = self.ctx.auth.identity_for(key)
        except CatalogError:  # the route answers 503 itself
            return None
        return identity.tenant if identity is not None else None
