"""`ulpt gc`: free blobs that no live adapter needs (interrupted registrations, deleted adapters)."""

from __future__ import annotations

from typing import Annotated

import typer

from ulpt.cli.catalog_options import (
    CatalogUrlOption,
    HomeOption,
    JsonOption,
    StoreUrlOption,
    make_client,
    parse_duration,
)
from ulpt.cli.output import console, print_json


def gc(
    grace: Annotated[
        str,
        typer.Option(help="Only blobs older than this (e.g. 30m, 1h, 2d): protects registrations in flight."),
    ] = "1h",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be deleted, delete nothing.")
    ] = False,
    as_json: JsonOption = False,
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Delete orphan blobs and deleted adapters' blobs older than the grace period.

    A job's data blobs are kept until the job is done. The grace period protects registrations and
    submissions in flight (blob written, row not yet committed); use --grace 0 only when nothing is
    registering or submitting.
    """
    with make_client(home, catalog_url, store_url) as client:
        report = client.gc(parse_duration(grace), dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
        return
    verb = "would free" if dry_run else "freed"
    console.print(
        f"{verb} {len(report.orphan_blobs)} orphan blob(s) and {len(report.deleted_adapter_blobs)} deleted "
        f"adapter blob(s), {report.bytes_freed:,} bytes; {report.partial_uploads} partial upload(s) cleaned",
        highlight=False,
    )
