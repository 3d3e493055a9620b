"""`ulpt adapters ...`: list, show, register, alias, delete and export catalog entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ulpt.adapters import methods
from ulpt.cli.catalog_options import (
    CatalogUrlOption,
    HomeOption,
    JsonOption,
    StoreUrlOption,
    TenantOption,
    make_client,
    parse_time,
)
from ulpt.cli.output import console, print_json
from ulpt.errors import SpecError
from ulpt.registry import AdapterRecord
from ulpt.sdk import Adapters

adapters_app = typer.Typer(
    name="adapters", help="Query and manage registered adapters.", no_args_is_help=True, add_completion=False
)


def _metrics_text(metrics: dict[str, Any], limit: int = 3) -> str:
    items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:limit]]
    return " ".join(items) + (" ..." if len(metrics) > limit else "")


def _tags_text(tags: dict[str, str]) -> str:
    return " ".join(k if v == "" else f"{k}={v}" for k, v in tags.items())


def _table(records: list[AdapterRecord], tenant: str) -> Table:
    table = Table(show_lines=False)
    for column in (
        "ref",
        "method",
        "n x r",
        "params",
        "base model",
        "status",
        "tags",
        "metrics",
        "created (UTC)",
    ):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            r.ref if r.tenant == tenant else f"{r.tenant}/{r.ref}",  # public adapters of other tenants
            r.method,
            f"{r.n_tokens} x {r.rank}" if methods.get(r.method).low_rank else f"{r.n_tokens}",
            f"{r.num_trainable_params:,}",
            r.base_model,
            r.status,
            _tags_text(r.tags),
            _metrics_text(r.metrics),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table


@adapters_app.command("list")
def list_adapters(
    name: Annotated[str | None, typer.Option(help="Only versions of this adapter name.")] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Only adapters for this base model.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help=f"Only this method: {', '.join(methods.METHODS)}.")
    ] = None,
    rank: Annotated[int | None, typer.Option(help="Only this rank r.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE or KEY (repeat: all must match).")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Threshold like eval_accuracy>=0.8 (repeatable).")
    ] = None,
    status: Annotated[str, typer.Option(help="ready, deleted or all.")] = "ready",
    since: Annotated[
        str | None, typer.Option(help="Created at or after: ISO time or a duration ago (2d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Created before: ISO time or a duration ago.")] = None,
    job: Annotated[str | None, typer.Option(help="Only adapters trained by this job id.")] = None,
    public: Annotated[bool, typer.Option("--public", help="Include other tenants' public adapters.")] = False,
    sort: Annotated[
        str, typer.Option(help="created_at, name, version or metrics.NAME; prefix - for descending.")
    ] = "-created_at",
    limit: Annotated[int, typer.Option(help="Page size (max 1000).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """List adapters matching every filter, one page at a time."""
    with make_client(home, catalog_url, store_url, tenant) as client:
        page = client.adapters.find(
            name=name,
            base_model=base_model,
            method=method,
            rank=rank,
            tags=tag or None,
            metrics=metric or None,
            status=None if status == "all" else status,
            created_after=parse_time(since) if since else None,
            created_before=parse_time(until) if until else None,
            job_id=job,
            include_public=public,
            order_by=sort,
            limit=limit,
            cursor=cursor,
        )
    if as_json:
        print_json({"items": [r.to_dict() for r in page.items], "next_cursor": page.next_cursor})
        return
    console.print(_table(list(page.items), tenant))
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", highlight=False, soft_wrap=True)


@adapters_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="name, name:version or an alias.")],
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Show one adapter with its lineage: job, dataset fingerprint, parent, children and aliases."""
    with make_client(home, catalog_url, store_url, tenant) as client:
        lineage = client.adapters.show(ref)
    record = lineage.record
    data = record.to_dict()
    data["lineage"] = {
        "job": lineage.job,
        "dataset_fingerprint": record.dataset_fingerprint,
        "parent": lineage.parent.ref if lineage.parent else None,
        "children": [child.ref for child in lineage.children],
        "aliases": list(lineage.aliases),
    }
    if as_json:
        print_json(data)
        return
    table = Table(title=f"{record.tenant}/{record.ref}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in (
        "id status method base_model hidden_size n_tokens rank seed num_trainable_params projection "
        "generator generator_version projection_fingerprint blob_key blob_sha256 blob_size public "
        "created_at deleted_at"
    ).split():
        table.add_row(key, str(data[key]))
    table.add_row("tags", _tags_text(record.tags))
    table.add_row("metrics", json.dumps(record.metrics))
    for key, value in data["lineage"].items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


@adapters_app.command("register")
def register(
    folder: Annotated[
        Path, typer.Argument(help="An adapter folder (adapter.safetensors + adapter_config.json).")
    ],
    name: Annotated[str, typer.Option(help="Adapter name.")],
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Defaults to the adapter's own.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE or KEY (repeatable).")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="NAME=NUMBER (repeatable).")] = None,
    version: Annotated[int | None, typer.Option(help="Explicit version (default: next).")] = None,
    parent: Annotated[
        str | None, typer.Option(help="Reference of the adapter this one derives from.")
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="Visible to every tenant.")] = False,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Register a saved adapter folder in the catalog and store."""
    from ulpt.adapters import Adapter

    metrics: dict[str, float] = {}
    for item in metric or []:
        key, sep, value = item.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            raise SpecError(f"invalid --metric {item!r}: expected NAME=NUMBER") from None
        if not sep:
            raise SpecError(f"invalid --metric {item!r}: expected NAME=NUMBER")
    with make_client(home, catalog_url, store_url, tenant) as client:
        record = client.adapters.register(
            Adapter.load(folder),
            name=name,
            base_model=base_model,
            tags=tag or None,
            metrics=metrics,
            version=version,
            parent=parent,
            public=public,
        )
    if as_json:
        print_json(record.to_dict())
    else:
        console.print(
            f"registered {record.ref} ({record.blob_size:,} bytes, {record.blob_key})", highlight=False
        )


@adapters_app.command("alias")
def alias(
    alias_name: Annotated[
        str | None, typer.Argument(metavar="ALIAS", help="Alias to set, move or show.")
    ] = None,
    ref: Annotated[
        str | None, typer.Argument(help="Adapter the alias should point at (name:version).")
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Move the alias back to its previous target.")
    ] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Delete the alias (not the adapter).")] = False,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Set or move an alias (promotion), roll it back, remove it, or list all aliases (no arguments)."""
    with make_client(home, catalog_url, store_url, tenant) as client:
        _alias(client.adapters, alias_name, ref, rollback, remove, as_json)


def _alias(
    adapters: Adapters, alias_name: str | None, ref: str | None, rollback: bool, remove: bool, as_json: bool
) -> None:
    if alias_name is None:
        pairs = adapters.aliases()
        if as_json:
            print_json([{"alias": a, "ref": r.ref, "id": r.id} for a, r in pairs])
            return
        table = Table()
        table.add_column("alias")
        table.add_column("adapter")
        for a, r in pairs:
            table.add_row(a, r.ref)
        console.print(table)
        return
    if sum([rollback, remove, ref is not None]) > 1:
        raise SpecError("give either a REF to point the alias at, --rollback or --remove")
    if remove:
        adapters.unalias(alias_name)
        result: dict[str, Any] = {"alias": alias_name, "removed": True}
    elif rollback:
        change = adapters.rollback(alias_name)
        result = {"alias": alias_name, "ref": change.target.ref, "previous": change.previous}
    elif ref is not None:
        change = adapters.alias(alias_name, ref)
        result = {"alias": alias_name, "ref": change.target.ref, "previous": change.previous}
    else:
        result = {"alias": alias_name, "ref": adapters.get(alias_name).ref}
    if as_json:
        print_json(result)
    elif result.get("removed"):
        console.print(f"removed alias {alias_name}", highlight=False)
    elif result.get("previous") and result["previous"] != result["ref"]:
        console.print(f"{alias_name} -> {result['ref']} (was {result['previous']})", highlight=False)
    else:
        console.print(f"{alias_name} -> {result['ref']}", highlight=False)


@adapters_app.command("delete")
def delete(
    ref: Annotated[str, typer.Argument(help="name:version to delete (or a name with --all).")],
    all_versions: Annotated[bool, typer.Option("--all", help="Delete every version of the name.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Also remove aliases pointing at it.")] = False,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Tombstone adapters; their blobs are freed by `ulpt gc` once nothing else uses them."""
    with make_client(home, catalog_url, store_url, tenant) as client:
        deleted = client.adapters.delete(ref, all_versions=all_versions, force=force)
    if as_json:
        print_json({"deleted": [r.ref for r in deleted]})
    else:
        console.print(f"deleted {', '.join(r.ref for r in deleted)}", highlight=False)


@adapters_app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="name, name:version or an alias.")],
    out: Annotated[Path, typer.Argument(help="Folder to write.")],
    peft: Annotated[bool, typer.Option("--peft", help="Write a PEFT PROMPT_TUNING adapter.")] = False,
    base_config: Annotated[
        Path | None,
        typer.Option("--base-config", help="Base model folder (config.json) for PEFT layer counts."),
    ] = None,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Write an adapter to a folder (checked on the way out): ulpt format, or PEFT with --peft."""
    config = None
    if base_config is not None:
        from transformers import AutoConfig

        if not (base_config / "config.json").is_file():
            raise SpecError(f"--base-config {base_config}: no config.json there (give a base model folder)")
        config = AutoConfig.from_pretrained(base_config, local_files_only=True)
    with make_client(home, catalog_url, store_url, tenant) as client:
        path = client.adapters.export(ref, out, peft=peft, base_config=config)
    console.print(f"wrote {'PEFT ' if peft else ''}adapter {ref} to {path}", highlight=False)
