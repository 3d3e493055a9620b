"""What one tenant may hold of a replica at once: the policy (`TenantLimits`), the slots that enforce it
(`TenantSlots`), and the clock that cuts a request body arriving too slowly (`timed_receive`).

A replica serves a bounded number of requests at once (Ray Serve's `max_ongoing_requests`). Without a
share per tenant, five clients sending one byte every two seconds, or five open event streams, held
every slot of the control plane, and every other tenant's requests waited. So each tenant gets at
most `max_requests` requests and `max_streams` streams at once per replica (beyond: 429 with
`Retry-After`), and a body must keep arriving (`body_idle_timeout_s` between chunks) and be whole
within `body_timeout_s` (beyond: 408), so a slot held by a slow client comes back. Uploads and fits
are counted per tenant in the catalog, so those limits hold across replicas.

Both applications use this module (the inference app in its handlers, the control plane as an ASGI
middleware); it lives in `ulpt_serving`, below the control plane, for the same reason `bodies` does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.types import Message, Scope, Send
from starlette.types import Receive as AsgiReceive

from ulpt.validation import SpecModel


class TenantLimits(SpecModel):
    """The per-tenant limits of a deployment (a `limits:` mapping in its args); the defaults protect a
    small deployment: one tenant never takes more than a quarter of a replica's 64 request slots."""

    max_requests: int = Field(default=16, ge=1, le=100_000)
    """Requests of one tenant a replica serves at once (streams included); beyond: 429."""
    max_streams: int = Field(default=4, ge=1, le=100_000)
    """Event streams of one tenant a replica holds open at once (job events, `stream: true`)."""
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600.0)
    """Seconds a request body may take to arrive whole; beyond: 408 and the slot is free."""
    body_idle_timeout_s: float = Field(default=10.0, gt=0, le=3600.0)
    """Seconds a request body may pause between two chunks; beyond: 408."""
    retry_after_s: int = Field(default=1, ge=0, le=3600)
    """The `Retry-After` of a 429."""
    max_files: int = Field(default=1000, ge=1, le=10_000_000)
    """Uploaded files a tenant may keep (control plane; delete some to upload more)."""
    max_file_bytes: int = Field(default=4 << 30, ge=1)
    """Bytes of uploaded files a tenant may keep, all files together (control plane)."""
    max_pending_fits: int = Field(default=100_000, ge=1)
    """Fits a tenant may have waiting (pending) when it submits a job: the default of every tenant's
    quota (`ulpt.catalog.quotas`; a tenant's own `max_pending_fits` overrides it); beyond: 429."""


class TooMany(Exception):
    """The tenant holds all the slots of its share; the caller answers 429 with `retry_after_s`."""

    def __init__(self, what: str, most: int) -> None:
        super().__init__(f"this tenant already has {most} {what} in progress here; retry shortly")


class BodyTimeout(HTTPException):
    """The request body stopped arriving or took too long: a 408 in each application's error shape
    (an HTTPException, so FastAPI's own body parsing lets it through unchanged)."""

    def __init__(self, detail: str) -> None:
        super().__init__(408, detail, headers={"Connection": "close"})


class TenantSlots:
    """Counts what each tenant holds in this replica; thread-safe, shared by every request."""

    def __init__(self, limits: TenantLimits) -> None:
        self.limits = limits
        self._requests: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, tenant: str, stream: bool = False) -> Iterator[None]:
        """One request (a stream also takes a stream slot) of `tenant` until the block ends."""
        self.acquire(tenant, stream)
        try:
            yield
        finally:
            self.release(tenant, stream)

    def acquire(self, tenant: str, stream: bool = False) -> None:
        """A request slot, and a stream slot with `stream`; `TooMany` (taking nothing) when either is full."""
        with self._lock:
            if self._requests[tenant] >= self.limits.max_requests:
                raise TooMany("requests", self.limits.max_requests)
            if stream and self._streams[tenant] >= self.limits.max_streams:
                raise TooMany("streams", self.limits.max_streams)
            self._requests[tenant] += 1
            if stream:
                self._streams[tenant] += 1

    def acquire_stream(self, tenant: str) -> None:
        """A stream slot for a request that already holds its request slot (known a stream once parsed)."""
        with self._lock:
            if self._streams[tenant] >= self.limits.max_streams:
                raise TooMany("streams", self.limits.max_streams)
            self._streams[tenant] += 1

    def release(self, tenant: str, stream: bool = False, request: bool = True) -> None:
        with self._lock:
            for counter, taken in ((self._requests, request), (self._streams, stream)):
                if taken:
                    counter[tenant] -= 1
                    if counter[tenant] <= 0:
                        del counter[tenant]

    def held(self, tenant: str) -> tuple[int, int]:
        """(requests, streams) `tenant` holds now."""
        with self._lock:
            return self._requests[tenant], self._streams[tenant]


def timed_receive(receive: AsgiReceive, limits: TenantLimits) -> AsgiReceive:
    """`receive` whose body messages must come `body_idle_timeout_s` apart and all within
    `body_timeout_s`, else `BodyTimeout`; once the body is whole, later calls (a streaming response
    waiting for the client to leave) wait as long as they like."""
    deadline = time.monotonic() + limits.body_timeout_s
    whole = False

    async def timed() -> Message:
        nonlocal whole
        if whole:
            return await receive()
        left = deadline - time.monotonic()
        wait = min(limits.body_idle_timeout_s, left)
        try:
            message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
        except TimeoutError:
            raise BodyTimeout(
                f"the request body arrived too slowly (a pause of {limits.body_idle_timeout_s:g} s, "
                f"or {limits.body_timeout_s:g} s in all)"
            ) from None
        if message.get("type") != "http.request" or not message.get("more_body", False):
            whole = True
        return message

    return timed


class HeldStream(StreamingResponse):
    """A streaming response that gives its tenant's slots back once it is over, however it ends: the
    body generator's own `finally` never runs when the client leaves before the first chunk."""

    def __init__(self, content: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: AsgiReceive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
