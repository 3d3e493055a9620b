"""Which HTTP answer each failure gets: the client's mistakes are 4xx, the server's are 5xx.

Kept apart from the handlers so the mapping can be read (and checked against the README's table) in
one place. Messages say what went wrong in terms a client can act on, never keys, paths or tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ulpt.errors import (
    AdapterFormatError,
    BlobIntegrityError,
    BlobNotFoundError,
    CatalogError,
    FingerprintMismatchError,
    SpecError,
    StoreError,
)
from ulpt_serving.protocol import ApiError

logger = logging.getLogger("ray.serve").getChild("ulpt")
T = TypeVar("T")


def internal_error() -> ApiError:
    return ApiError(
        500, "internal error while generating; the request was not completed", type="server_error"
    )


def empty_input(chat: bool) -> ApiError:
    """The bare base model given no text has nothing to continue from; an adapter's prompt is a start."""
    return ApiError(
        400,
        "prompt: the input is empty; the base model needs at least one token to continue from "
        "(give a prompt, or use an adapter, whose own prompt is a start)",
        param="messages" if chat else "prompt",
    )


def adapter_unavailable(ref: str, exc: Exception, retry_after: dict[str, str]) -> ApiError:
    """503 (try again) when the store itself is down, 500 naming the failed check when the blob is bad."""
    if type(exc) is StoreError:
        return ApiError(
            503, f"adapter {ref!r} could not be loaded; try again", type="server_error", headers=retry_after
        )
    return ApiError(
        500,
        f"adapter {ref!r} could not be loaded: its stored data failed checks ({failed_check(exc)})",
        type="server_error",
    )


def failed_check(exc: Exception) -> str:
    """Which check an adapter's stored data failed, for the client: a kind of damage, never keys or paths."""
    if isinstance(exc, BlobNotFoundError):
        return "its blob is missing from the store"
    if isinstance(exc, BlobIntegrityError):
        return "its blob does not match its recorded SHA-256"
    if isinstance(exc, FingerprintMismatchError):
        return "its projection fingerprint does not match"
    if isinstance(exc, AdapterFormatError):
        return "its blob and catalog entry do not describe one valid adapter"
    return "it is no longer available"


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header of a 503, in whole seconds (at least 1), as Serve's own 429 sends it."""
    return {"Retry-After": str(max(1, round(seconds)))}


async def from_catalog(fn: Callable[..., T], *args: Any, retry_after: dict[str, str]) -> T:
    """Run a catalog query off the event loop; an unreachable catalog answers 503 (try again), not 500,
    and a reference the catalog refuses as malformed answers 400."""
    try:
        return await asyncio.to_thread(fn, *args)
    except CatalogError as exc:
        logger.error("catalog unavailable: %s", exc)
        raise ApiError(
            503, "the adapter catalog is unavailable; try again", type="server_error", headers=retry_after
        ) from None
    except SpecError as exc:
        raise ApiError(400, str(exc)) from None


def invalid_parameter(errors: Sequence[Any]) -> ApiError:
    """A bad query parameter gets the same OpenAI error (400) as a bad body field, not FastAPI's 422."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    return ApiError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None)
