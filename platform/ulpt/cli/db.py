"""`ulpt db ...`: catalog schema migrations (Alembic), the only way a shared catalog's schema changes."""

from __future__ import annotations

import typer

from ulpt.catalog.db import SCHEMA_REVISION, Catalog, create_catalog_engine
from ulpt.cli.catalog_options import CatalogUrlOption, HomeOption, JsonOption, make_client
from ulpt.cli.output import console, print_json

db_app = typer.Typer(name="db", help="Catalog schema migrations.", no_args_is_help=True, add_completion=False)


def _catalog(home: HomeOption, catalog_url: CatalogUrlOption) -> Catalog:
    """The catalog without a schema check (these commands exist to fix the schema)."""
    url = make_client(home, catalog_url, None).catalog_url
    return Catalog(create_catalog_engine(url), url)


@db_app.command("upgrade")
def upgrade(
    revision: str = typer.Option("head", help="Target revision."),
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
) -> None:
    """Apply pending migrations to the catalog (ULPT_CATALOG_URL, or the embedded default)."""
    from ulpt.catalog.migrate import upgrade as run_upgrade

    catalog = _catalog(home, catalog_url)
    try:
        before = catalog.schema_revision()
        run_upgrade(catalog.engine, revision)
        after = catalog.schema_revision()
    finally:
        catalog.close()
    if before == after:
        console.print(f"catalog {catalog.url} is already at {after}", highlight=False)
    else:
        console.print(f"catalog {catalog.url} upgraded: {before or 'empty'} -> {after}", highlight=False)


@db_app.command("current")
def current(
    as_json: JsonOption = False, home: HomeOption = None, catalog_url: CatalogUrlOption = None
) -> None:
    """Show the catalog's schema revision and whether it is the one this ulpt needs."""
    catalog = _catalog(home, catalog_url)
    try:
        revision = catalog.schema_revision()
    finally:
        catalog.close()
    data = {
        "url": catalog.url,
        "revision": revision,
        "required": SCHEMA_REVISION,
        "up_to_date": revision == SCHEMA_REVISION,
    }
    if as_json:
        print_json(data)
        return
    state = "up to date" if data["up_to_date"] else "run `ulpt db upgrade`"
    console.print(
        f"{catalog.url}: {revision or 'empty'} (this ulpt needs {SCHEMA_REVISION}; {state})", highlight=False
    )
