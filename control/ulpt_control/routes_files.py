"""`/v1/files`: data files for jobs. The body is the file itself (JSON lines), its size checked before
it is read; `purpose=fine-tune` also checks for OpenAI's `{"prompt","completion"}` or `{"messages"}`
rows. Responses are OpenAI file objects (plus `rows` and `sha256`).

A raw body streams to a temporary file, is checked one line at a time and streams on to the store,
so an upload costs the replica a chunk of memory, not a multiple of its size (a 64 MiB upload once
grew a replica by 3.4 GB); a multipart form (OpenAI's client) is read the same way, its file part
copied out a chunk at a time (`multipart.py`). Each tenant keeps at most `limits.max_files` files
of `limits.max_file_bytes` in all (429 `insufficient_quota` beyond: delete files to upload more)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ulpt.registry.files import FileRecord
from ulpt_control.auth import READ, TRAIN, Caller, context
from ulpt_control.errors import ApiError
from ulpt_control.multipart import parse_form
from ulpt_serving.bodies import spool_body

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSE = "^(data|fine-tune)$"


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": int(record.created_at.timestamp()),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "rows": record.rows,
        "sha256": record.sha256,
    }


@router.post(
    "",
    status_code=201,
    summary="Upload a JSON-lines data file: the raw body, or OpenAI's multipart form (file, purpose)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/jsonl": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "purpose": {"type": "string", "enum": ["data", "fine-tune"]},
                        },
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def upload_file(
    request: Request,
    filename: str = Query("upload.jsonl", max_length=256),
    purpose: str = Query("data", pattern=PURPOSE),
    caller: Caller = TRAIN,
) -> dict[str, Any]:
    ctx = context(request)
    limits = ctx.config.limits
    files = ctx.registry.files(caller.tenant)
    count, used = await run_in_threadpool(files.usage)
    if count >= limits.max_files:
        raise quota(f"this tenant keeps {count} files, its limit; delete some to upload more")
    room = limits.max_file_bytes - used
    with tempfile.NamedTemporaryFile(prefix="ulpt-upload-") as spool:
        size = await spool_body(request, spool, ctx.config.max_upload_bytes, ApiError, "file")
        if size > room:
            raise quota(f"this upload would take the tenant's files past {limits.max_file_bytes} bytes")
        content_type = request.headers.get("content-type", "")
        with tempfile.NamedTemporaryFile(prefix="ulpt-upload-") as content:
            path = Path(spool.name)
            if content_type.lower().startswith("multipart/form-data"):
                spool.seek(0)
                form = await run_in_threadpool(parse_form, spool, content_type, content)
                if not form.has_file:
                    raise ApiError(400, "the form has no file part", param="file")
                filename = form.filename or filename
                purpose = form.fields.get("purpose", purpose)
                if purpose not in ("data", "fine-tune"):
                    raise ApiError(400, "purpose: data or fine-tune", param="purpose")
                path = Path(content.name)
            record = await run_in_threadpool(
                lambda: files.upload_file(path, filename=filename, purpose=purpose)
            )
    return file_object(record)


def quota(message: str) -> ApiError:
    """A tenant's upload limit reached: retrying will not help until it deletes files."""
    return ApiError(429, message, type="insufficient_quota")


@router.get("", summary="The tenant's files, newest first, a page at a time (`after`: the last id)")
def list_files(
    request: Request,
    purpose: str | None = Query(None, pattern=PURPOSE),
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(None, max_length=64, description="`last_id` of the previous page."),
    caller: Caller = READ,
) -> dict[str, Any]:
    found = context(request).registry.files(caller.tenant).list(purpose=purpose, limit=limit + 1, after=after)
    page = found[:limit]
    return {
        "object": "list",
        "data": [file_object(r) for r in page],
        "has_more": len(found) > limit,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


@router.get("/{file_id}", summary="One file's description")
def get_file(request: Request, file_id: str, caller: Caller = READ) -> dict[str, Any]:
    return file_object(context(request).registry.files(caller.tenant).get(file_id))


@router.get(
    "/{file_id}/content",
    summary="A file's bytes",
    response_class=Response,
    responses={200: {"content": {"application/jsonl": {}}}},
)
def file_content(request: Request, file_id: str, caller: Caller = READ) -> Response:
    data = context(request).registry.files(caller.tenant).content(file_id)
    return Response(data, media_type="application/jsonl")


@router.delete("/{file_id}", summary="Delete a file (jobs already submitted keep their rows)")
def delete_file(request: Request, file_id: str, caller: Caller = TRAIN) -> dict[str, Any]:
    record = context(request).registry.files(caller.tenant).delete(file_id)
    return {"id": record.id, "object": "file", "deleted": True}
