"""Request bodies read with a ceiling: refused from the declared length before a byte is read, or as
soon as a chunked stream passes the limit, so an oversized upload never fills memory."""

from __future__ import annotations

from fastapi import Request

from ulpt_control.errors import ApiError


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    too_large = ApiError(413, f"the {what} is larger than {limit} bytes", param=None)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
