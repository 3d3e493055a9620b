"""`/v1/keys`: the tenant's API keys (admin scope). A new key's plaintext is in the creation response
only; listings carry ids, names, scopes and times, never a key or its hash. A new key's scopes are a
subset of its creator's: a key can never make one stronger than itself."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request

from ulpt.catalog.models import SCOPES
from ulpt.keys_api import Keys
from ulpt_control.auth import ADMIN, Caller, context
from ulpt_control.errors import ApiError

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def keys(request: Request, caller: Caller) -> Keys:
    return Keys(context(request).registry.catalog, caller.tenant)


@router.get("", summary="The tenant's keys, oldest first (never the keys themselves)")
def list_keys(request: Request, caller: Caller = ADMIN) -> dict[str, Any]:
    return {"items": [info.to_dict() for info in keys(request, caller).list()]}


@router.post("", status_code=201, summary="Create a key; its plaintext is returned only this once")
def create_key(
    request: Request,
    name: str | None = Body(None, max_length=128),
    scopes: list[str] | None = Body(
        None, max_length=len(SCOPES), description="read, train, admin; default: the creating key's"
    ),
    caller: Caller = ADMIN,
) -> dict[str, Any]:
    if scopes is None:
        scopes = [s for s in SCOPES if s in caller.scopes]
    beyond = [s for s in SCOPES if s in scopes and s not in caller.scopes]  # unknown ones: the core's 400
    if beyond:  # else an admin-only key could mint a key that trains and reads
        raise ApiError(
            403,
            f"a key can grant only scopes its creator holds; this one lacks {', '.join(beyond)}",
            type="permission_error",
            param="scopes",
        )
    new = keys(request, caller).create(name, scopes=scopes)
    return new.to_dict()


@router.delete("/{key_id}", summary="Revoke a key: refused from the next request on")
def revoke_key(request: Request, key_id: str, caller: Caller = ADMIN) -> dict[str, Any]:
    return keys(request, caller).revoke(key_id).to_dict()
