"""Every refusal as one JSON shape, `{"error": {"message", "type", "param"}}` (OpenAI's, so its client
shows our messages), with a status a client can act on.

A missing object and another tenant's object give the same 404 body, built only from what the
caller sent. Catalog and store failures become a 503 without their details (URLs, hosts, drivers).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ulpt.errors import (
    CatalogError,
    ConflictError,
    NotFoundError,
    QuotaError,
    StoreError,
    UlptError,
    first_line,
)
from ulpt_control.views import scrub_text

log = logging.getLogger("ulpt.control")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    """The one 404 for `what`: the same whether it never existed or belongs to another tenant."""
    return ApiError(404, f"no such {what}", type="not_found_error")


def from_ulpt(exc: UlptError) -> ApiError:
    """Which status a library error becomes; its one-line message for what the caller can fix."""
    if isinstance(exc, NotFoundError):
        return ApiError(404, first_line(exc), type="not_found_error")
    if isinstance(exc, ConflictError):
        return ApiError(409, first_line(exc), type="conflict_error")
    if isinstance(exc, QuotaError):  # 429: retry once the queue drains; 413: this job never fits
        headers = {"Retry-After": "60"} if exc.rate else None  # pending fits drain as pools train them
        return ApiError(429 if exc.rate else 413, first_line(exc), type="quota_error", headers=headers)
    if isinstance(exc, (CatalogError, StoreError)):
        log.warning("control plane storage failure: %s", type(exc).__name__)
        return ApiError(503, "the catalog or the store is unavailable; retry later", type="server_error")
    return ApiError(400, first_line(exc))


def response(exc: ApiError) -> JSONResponse:
    headers = {**exc.headers, **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})}
    body = {
        "error": {
            "message": scrub_text(first_line(exc.message)),
            "type": exc.type,
            "param": exc.param,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=exc.status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(UlptError)
    async def _ulpt_error(_request: Request, exc: UlptError) -> JSONResponse:
        return response(from_ulpt(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own refusals (an unknown route, a method a route lacks) in the one shape."""
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return response(
            ApiError(exc.status_code, str(exc.detail), type=kind, headers=dict(exc.headers or {}))
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid")
        return response(ApiError(400, message, param=where or None))
