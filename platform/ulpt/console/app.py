"""The console's FastAPI app: the static pages, their configuration, and headers that keep them safe.

Served at `/console` by `ulpt serve` (and as its own Serve application in a RayService). The pages
reach the control plane and the inference app on the same origin (`api_base` and `inference_base`
are path prefixes, empty on one port).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    # Only our own files run; the pages talk to their own origin; nothing may frame them.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class ConsoleConfig:
    """Where the pages find the two APIs, as path prefixes on the console's own origin."""

    api_base: str = ""
    """Prefix of the control plane's routes (`/v1/jobs`, `/v1/adapters`, ...); empty: the origin's root."""
    inference_base: str = ""
    """Prefix of the inference app's `/v1/completions`; empty: the origin's root."""
    auth: bool = True
    """False when the APIs run without keys (`ulpt serve --no-auth` on loopback): no key is asked for."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_console_app(config: ConsoleConfig | None = None) -> FastAPI:
    """The pages and `config.json`; mount it under `/console` (or give it that route prefix)."""
    config = config or ConsoleConfig()
    app = FastAPI(title="ulpt console", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def secure(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/config.json", include_in_schema=False)
    def settings() -> JSONResponse:
        return JSONResponse(config.to_dict())

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
