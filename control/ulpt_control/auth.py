"""Who is calling: a Bearer key -> its tenant and scopes, checked before anything else of a request.

A request with a missing, malformed, unknown or revoked key gets one 401, whatever was wrong; a key
without the route's scope gets 403 (it is a real key of a real tenant, so nothing leaks).
Keys are never logged; the check itself is the core's (`ulpt.registry.keys.Authenticator`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ulpt_control.context import ControlContext
from ulpt_control.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="An API key of `ulpt keys create`, as `Bearer KEY`.")


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    scopes: frozenset[str]


def context(request: Request) -> ControlContext:
    ctx: ControlContext = request.app.state.control
    return ctx


def requires(scope: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, refused unless its key holds `scope`."""

    async def caller(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Caller:
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise unauthorized()
        identity = await run_in_threadpool(context(request).auth.identity_for, credentials.credentials)
        if identity is None:
            raise unauthorized()
        if scope not in identity.scopes:
            raise ApiError(403, f"this key lacks the {scope!r} scope", type="permission_error")
        return Caller(identity.tenant, identity.key_id, identity.scopes)

    return caller


def unauthorized() -> ApiError:
    return ApiError(401, "give a valid API key as `Authorization: Bearer KEY`", type="authentication_error")


READ = Depends(requires("read"))
TRAIN = Depends(requires("train"))
ADMIN = Depends(requires("admin"))
