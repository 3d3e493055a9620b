"""Alembic environment for the ulpt catalog.

Run through `ulpt db upgrade` (which hands over its engine), or directly with
`alembic -c migrations/alembic.ini upgrade head` and the URL in ULPT_CATALOG_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Engine

from ulpt.catalog.db import create_catalog_engine
from ulpt.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = os.environ.get("ULPT_CATALOG_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ULPT_CATALOG_URL (or sqlalchemy.url) to the catalog to migrate")
    return create_catalog_engine(url)


def run_migrations_offline() -> None:
    url = os.environ.get("ULPT_CATALOG_URL") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
