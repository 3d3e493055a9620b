"""`ulpt keys create|list|revoke`: the API keys with which callers of the HTTP API act as a tenant.

Every command acts on the keys of `--tenant` only. `create` writes the new key to stdout alone (so
`KEY=$(ulpt keys create)` works) and everything else to stderr; it is the only time the key is shown.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ulpt.catalog.models import SCOPES
from ulpt.cli.catalog_options import (
    CatalogUrlOption,
    HomeOption,
    JsonOption,
    StoreUrlOption,
    TenantOption,
    make_client,
)
from ulpt.cli.output import console, err_console, print_json

keys_app = typer.Typer(
    name="keys",
    help="API keys of the HTTP API (`ulpt serve`): create, list, revoke.",
    no_args_is_help=True,
    add_completion=False,
)


@keys_app.command("create")
def create_key(
    name: Annotated[
        str | None, typer.Option(help="A name to recognize the key by in `ulpt keys list`.")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="What the key may do, repeatable: read (every GET), train (jobs and uploads), "
            "admin (aliases, deletion, keys). Default: all three.",
        ),
    ] = None,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Create an API key for the tenant and print it; it is shown only this once (the catalog keeps a hash).

    Callers of the HTTP API send it as `Authorization: Bearer KEY` and act as this tenant, within the
    key's scopes.
    """
    with make_client(home, catalog_url, store_url, tenant) as client:
        new = client.keys.create(name, scopes=tuple(scope) if scope else SCOPES)
    if as_json:
        print_json(new.to_dict())
        return
    err_console.print(
        f"created API key {new.id} ({new.label or 'no name'}) of tenant {new.tenant}, "
        f"scopes {','.join(new.scopes)}; "
        "it is shown only now, store it safely:",
        highlight=False,
        soft_wrap=True,
    )
    console.print(new.key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def list_keys(
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """The tenant's API keys, oldest first: id, name, when created and when revoked (never the key)."""
    with make_client(home, catalog_url, store_url, tenant) as client:
        found = client.keys.list()
    if as_json:
        print_json([info.to_dict() for info in found])
        return
    table = Table()
    for column in ("id", "name", "scopes", "created (UTC)", "revoked (UTC)"):
        table.add_column(column, overflow="fold")
    for info in found:
        table.add_row(
            info.id,
            info.name or "",
            ",".join(info.scopes),
            info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            info.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if info.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `ulpt keys list` shows (not the key).")],
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Revoke one of the tenant's API keys: the HTTP API refuses it from then on. Cannot be undone."""
    with make_client(home, catalog_url, store_url, tenant) as client:
        info = client.keys.revoke(key_id)
    if as_json:
        print_json(info.to_dict())
        return
    console.print(
        f"API key {info.id} ({info.name or 'no name'}) of tenant {info.tenant} revoked", highlight=False
    )
