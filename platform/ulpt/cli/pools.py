"""`ulpt pools list`: the trainer pools, read from the catalog: their live members and how well each
packs (fits and rows per forward pass of its last step), the fits queued for them, and the fits each
tenant has training in them. An operator's view: it spans every tenant."""

from __future__ import annotations

import typer
from rich.table import Table

from ulpt.catalog.pools import pool_overview
from ulpt.cli.catalog_options import CatalogUrlOption, HomeOption, JsonOption, StoreUrlOption, make_client
from ulpt.cli.output import console, print_json

pools_app = typer.Typer(
    name="pools",
    help="Trainer pools (docs/pools.md): members, packing, queue depth, running fits per tenant.",
    no_args_is_help=True,
    add_completion=False,
)


@pools_app.command("list")
def list_pools(
    as_json: JsonOption = False,
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Every pool with a live member or an open pooled job: one row per member (or one without)."""
    with make_client(home, catalog_url, store_url) as client, client.catalog.read() as session:
        pools = pool_overview(session)
    if as_json:
        print_json([pool.__dict__ for pool in pools])
        return
    table = Table()
    for column in ("pool", "queued", "running per tenant", "member", "fits", "fits/fwd", "rows/fwd", "steps"):
        table.add_column(column, overflow="fold")
    for pool in pools:
        running = ", ".join(f"{tenant} {n}" for tenant, n in pool.running_per_tenant.items()) or "-"
        first = (pool.pool, str(pool.queue_depth), running)
        if not pool.members:
            table.add_row(*first, "(none)", "", "", "", "")
        for i, m in enumerate(pool.members):
            lead = first if i == 0 else ("", "", "")
            table.add_row(
                *lead,
                m["id"],
                str(m["fits"]),
                f"{m['fits_per_forward']:g}",
                f"{m['rows_per_forward']:g}",
                str(m["steps"]),
            )
    console.print(table)
