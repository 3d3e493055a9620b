"""Bulk inserts: PostgreSQL's COPY on the session's own connection, an executemany elsewhere.

COPY streams rows to the server in one command: no per-row statement to parse, plan and acknowledge,
which is where INSERT executemany spent most of a bulk registration. It runs on the psycopg
connection that SQLAlchemy's session has already opened its transaction on (`session.connection()`),
so the rows commit or roll back with everything else the session did: a crash before the commit
leaves nothing, exactly as with INSERT. Table and column names come from SQLAlchemy's metadata,
quoted by the dialect; values go through each column type's own bind processing (JSON, UTC
timestamps) before psycopg writes them, so COPY stores what an INSERT would have stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


def bulk_insert(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts keyed by column name) into `table` within the session's transaction.

    COPY on PostgreSQL when every row names the same columns and none left out has a Python-side
    default (COPY cannot apply one); otherwise, and on SQLite, one executemany INSERT.
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    keys = list(rows[0])
    if dialect.name != "postgresql" or not _copyable(table, keys, rows):
        session.execute(insert(table), [dict(row) for row in rows])
        return
    columns = [table.c[key] for key in keys]
    processors = [column.type.dialect_impl(dialect).bind_processor(dialect) for column in columns]
    quote = dialect.identifier_preparer
    statement = (
        f"COPY {quote.format_table(table)} ({', '.join(quote.format_column(c) for c in columns)}) FROM STDIN"
    )
    driver = connection.connection.driver_connection
    assert driver is not None  # a checked-out connection always has its psycopg connection
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(
                    [
                        value if process is None or value is None else process(value)
                        for value, process in zip((row[k] for k in keys), processors)
                    ]
                )
    except dialect.loaded_dbapi.Error as exc:  # raised as SQLAlchemy would: IntegrityError, ...
        raise DBAPIError.instance(statement, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc


def _copyable(table: Table, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> bool:
    if any(key not in table.c for key in keys):
        return False
    given = set(keys)
    if any(column.default is not None and column.key not in given for column in table.c):
        return False
    return all(len(row) == len(keys) and given.issuperset(row) for row in rows)
