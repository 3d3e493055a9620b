"""`/v1/adapters` and `/v1/aliases`: find, show (with lineage), download, delete; promote and roll back.

References are `name`, `name:version`, an alias, or `owner/name...` for another tenant's public
adapter, exactly as in the SDK; another tenant's private adapter reads like one that does not exist.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response

from ulpt.registry import Adapters
from ulpt_control.auth import ADMIN, READ, Caller, context

router = APIRouter(tags=["adapters"])

SORT = r"^-?(created_at|name|version|metrics\.[A-Za-z0-9_.-]{1,64})$"


def view(request: Request, caller: Caller) -> Adapters:
    return context(request).registry.for_tenant(caller.tenant)


def record_dict(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = record.to_dict()
    out.pop("blob_key", None)  # where the store keeps it is the service's business
    return out


@router.get("/v1/adapters", summary="Find adapters: filters, sort and cursor of `ulpt adapters list`")
def find_adapters(
    request: Request,
    name: str | None = Query(None, max_length=128),
    owner: str | None = Query(None, max_length=64, description="Only this tenant's (public ones of others)."),
    base_model: str | None = Query(None, max_length=512),
    method: str | None = Query(None, max_length=32),
    rank: int | None = Query(None, ge=1, le=1_000_000),
    n_tokens: int | None = Query(None, ge=1, le=1_000_000),
    tag: list[str] = Query([], max_length=32, description="key=value or a bare tag; all must match."),
    metric: list[str] = Query([], max_length=32, description="Thresholds such as eval_accuracy>=0.8."),
    status: str = Query("ready", pattern="^(ready|deleted|all)$"),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    job_id: str | None = Query(None, max_length=64),
    include_public: bool = False,
    sort: str = Query("-created_at", pattern=SORT),
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=512, description="`next_cursor` of the previous page."),
    caller: Caller = READ,
) -> dict[str, Any]:
    page = view(request, caller).find(
        tenant=owner,
        name=name,
        base_model=base_model,
        method=method,
        rank=rank,
        n_tokens=n_tokens,
        tags=tag or None,
        metrics=metric or None,
        status=None if status == "all" else status,
        created_after=created_after,
        created_before=created_before,
        job_id=job_id,
        include_public=include_public,
        order_by=sort,
        limit=limit,
        cursor=cursor,
    )
    return {"items": [record_dict(r) for r in page.items], "next_cursor": page.next_cursor}


@router.get(
    "/v1/adapters/{ref:path}/download",
    summary="Download an adapter: our safetensors blob, or a zipped PEFT PROMPT_TUNING folder",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}, "application/zip": {}}}},
)
def download_adapter(
    request: Request, ref: str, format: str = Query("ulpt", pattern="^(ulpt|peft)$"), caller: Caller = READ
) -> Response:
    adapters = view(request, caller)
    record = adapters.get(ref)
    adapter = record.load()  # SHA-256 and projection fingerprint checked on the way out
    stem = f"{record.name}-v{record.version}"
    if format == "ulpt":
        return Response(
            adapter.to_bytes(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{stem}.safetensors"'},
        )
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="ulpt-peft-") as folder:
        written = adapter.export_peft(Path(folder) / stem)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(written).rglob("*")):
                if path.is_file():
                    archive.write(path, f"{stem}/{path.relative_to(written)}")
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{stem}-peft.zip"'},
    )


@router.get("/v1/adapters/{ref:path}", summary="An adapter with its lineage and metrics")
def show_adapter(request: Request, ref: str, caller: Caller = READ) -> dict[str, Any]:
    lineage = view(request, caller).show(ref)
    out = record_dict(lineage.record)
    out["lineage"] = {
        "job": lineage.job,
        "dataset_fingerprint": lineage.record.dataset_fingerprint,
        "parent": lineage.parent.ref if lineage.parent else None,
        "children": [child.ref for child in lineage.children],
        "aliases": list(lineage.aliases),
    }
    return out


@router.delete("/v1/adapters/{ref:path}", summary="Delete name:version (or every version with all_versions)")
def delete_adapter(
    request: Request, ref: str, all_versions: bool = False, force: bool = False, caller: Caller = ADMIN
) -> dict[str, Any]:
    deleted = view(request, caller).delete(ref, all_versions=all_versions, force=force)
    return {"deleted": [r.ref for r in deleted]}


@router.get("/v1/aliases", tags=["aliases"], summary="The tenant's aliases and what they point at")
def list_aliases(request: Request, caller: Caller = READ) -> dict[str, Any]:
    return {"items": [{"alias": a, "ref": r.ref, "id": r.id} for a, r in view(request, caller).aliases()]}


@router.put("/v1/aliases/{alias}", tags=["aliases"], summary="Promote: point an alias at an adapter")
def set_alias(
    request: Request,
    alias: str,
    target: str = Body(..., embed=True, max_length=256, description="name:version (or any reference)."),
    caller: Caller = ADMIN,
) -> dict[str, Any]:
    change = view(request, caller).alias(alias, target)
    return {"alias": alias, "ref": change.target.ref, "previous": change.previous}


@router.post(
    "/v1/aliases/{alias}/rollback", tags=["aliases"], summary="Move an alias back to its previous target"
)
def rollback_alias(request: Request, alias: str, caller: Caller = ADMIN) -> dict[str, Any]:
    change = view(request, caller).rollback(alias)
    return {"alias": alias, "ref": change.target.ref, "previous": change.previous}


@router.delete("/v1/aliases/{alias}", tags=["aliases"], summary="Remove an alias (the adapter stays)")
def remove_alias(request: Request, alias: str, caller: Caller = ADMIN) -> dict[str, Any]:
    view(request, caller).unalias(alias)
    return {"alias": alias, "removed": True}
