"""Request bodies read with a ceiling: refused from the declared length before a byte is read, or as
soon as a chunked stream passes the limit, so an oversized upload never fills memory.

Both HTTP layers read their bodies here: the inference routes (`admission.MAX_BODY_BYTES`) and the
control plane (its upload and job spec limits). It lives in `ulpt_serving` because the layers contract
(pyproject `[tool.importlinter]`) puts the control plane above serving, so both may import it, while
the core holds no HTTP code. Each layer answers with its own error type, which it passes in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from fastapi import Request

from ulpt_serving.limits import BodyTimeout, TenantLimits, timed_receive


async def read_body(
    request: Request,
    limit: int,
    refuse: Callable[[int, str], Exception],
    what: str = "request body",
    limits: TenantLimits | None = None,
) -> bytes:
    """The whole body, or `refuse(413, message)` raised once it is known to exceed `limit` bytes, or
    `refuse(408, message)` when `limits` are given and the body arrives slower than they allow (the
    control plane's middleware already reads every body on that clock)."""
    too_large = refuse(413, f"the {what} is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    if limits is not None:
        request = Request(request.scope, timed_receive(request.receive, limits))
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except BodyTimeout as exc:
        raise refuse(408, str(exc.detail)) from None
    return b"".join(chunks)


async def spool_body(
    request: Request, target: IO[bytes], limit: int, refuse: Callable[[int, str], Exception], what: str
) -> int:
    """Write the body to `target` chunk by chunk (memory: one chunk, whatever the body's size); its
    size, or `refuse(413, message)` once it is known to exceed `limit` bytes."""
    too_large = refuse(413, f"the {what} is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        target.write(chunk)
    target.flush()
    return size
