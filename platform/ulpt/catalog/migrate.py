"""Alembic, driven from code: `ulpt db upgrade` works from any directory, installed or from a checkout.

The migrations live in the top-level `migrations/` folder of the repository; the wheel ships a copy
inside the package (`ulpt/catalog/migrations`, via a hatch force-include), which is looked for first.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ulpt.errors import CatalogError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Engine


def migrations_dir() -> Path:
    """`$ULPT_MIGRATIONS`, else the copy inside the installed package, else `<checkout>/migrations`."""
    here = Path(__file__).resolve().parent
    candidates = [os.environ.get("ULPT_MIGRATIONS"), here / "migrations", here.parents[2] / "migrations"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "env.py").is_file():
            return Path(candidate)
    raise CatalogError(
        f"cannot find the catalog migrations (looked in {', '.join(str(c) for c in candidates if c)})"
    )


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for `migrations_dir()`; `engine` goes to env.py as is (no URL round trip)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


@lru_cache(maxsize=1)
def known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise CatalogError(f"the catalog migrations have {len(heads)} heads, expected one: {heads}")
    return heads[0]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`, in a transaction (on PostgreSQL DDL is transactional too)."""
    from alembic import command

    from ulpt.catalog.db import catalog_errors, display_url

    with catalog_errors(display_url(str(engine.url))):
        command.upgrade(alembic_config(engine), revision)
