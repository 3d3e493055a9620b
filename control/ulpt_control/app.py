"""The control plane's FastAPI app: routes of `routes_*`, one error shape, the context on app.state.

`build_app(ctx)` makes a fresh app per context (tests run it in-process with the tiny model); the
Serve deployment (`ulpt_control.deployment`) builds one per replica.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ulpt_control import errors, routes_adapters, routes_files, routes_jobs, routes_keys, routes_openai
from ulpt_control.context import ControlContext
from ulpt_control.limiting import TenantLimitMiddleware

TITLE = "ulpt control plane"
DESCRIPTION = (
    "Jobs, catalog, files and keys of one tenant, behind API keys (`Authorization: Bearer KEY`). "
    "Every route acts as the key's tenant within its scopes: read (GET), train (jobs, files), "
    "admin (aliases, deletion, keys). Another tenant's objects answer exactly like missing ones."
)


def build_app(ctx: ControlContext | None) -> FastAPI:
    app = FastAPI(title=TITLE, description=DESCRIPTION, version="1")
    app.state.control = ctx
    errors.install(app)
    if ctx is not None:
        app.add_middleware(TenantLimitMiddleware, ctx=ctx)
    for module in (routes_jobs, routes_files, routes_adapters, routes_keys, routes_openai):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"], summary="The control plane is up")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    return app


def openapi_schema() -> dict[str, Any]:
    """The schema published as docs/control.openapi.json (`make schema`; a test compares them)."""
    return build_app(None).openapi()
