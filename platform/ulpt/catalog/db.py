"""Opening a catalog from a URL: engine and sessions, connection errors as one line, schema revision check.

SQLite (the embedded default) and PostgreSQL share every code path. Opening a catalog whose schema is
behind this ulpt raises MigrationRequiredError; only the embedded default may upgrade itself, since
it is the user's own file, while a shared PostgreSQL catalog is never migrated behind anyone's back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Column, MetaData, String, Table, create_engine, event, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ulpt.errors import CatalogError, MigrationRequiredError, first_line

SCHEMA_REVISION = "0006"
"""The Alembic head this code needs; a test checks it equals the head of `migrations/versions`."""

T = TypeVar("T")
_alembic_version = Table("alembic_version", MetaData(), Column("version_num", String(32), primary_key=True))


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def display_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def create_catalog_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the settings ulpt relies on: SQLite foreign keys + WAL, PostgreSQL connect timeout."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CatalogError(
            f"invalid catalog URL {url!r}: expected e.g. sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        ) from None
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "postgresql":
        # No pool_pre_ping: it costs a round trip per checkout; `Catalog.query` retries a read whose
        # pooled connection died (server restart) instead.
        options["pool_recycle"] = 3600
        options["connect_args"] = {"connect_timeout": 10}
    else:
        raise CatalogError(
            f"unsupported catalog URL {display_url(url)}: use sqlite:///PATH or postgresql+psycopg://..."
        )
    options.update(kwargs)
    try:
        engine = create_engine(parsed, **options)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise CatalogError(f"no database driver for catalog URL {display_url(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    else:
        event.listen(engine, "connect", _postgres_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (serving + training at once)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _postgres_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Settings for a catalog's short, indexed queries (measured at 200k-1M adapters).

    No parallel workers: starting them costs more than a LIMIT 50 query. Custom plans: a prepared
    `find` must be planned for its actual tenant and tag values, whose selectivities differ widely.
    """
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET max_parallel_workers_per_gather = 0")
        cursor.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_connection.autocommit = autocommit


class Catalog:
    """An open catalog: an engine plus transactions for the `ulpt.catalog` query functions."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = display_url(url)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips around a one-statement `get`.
        self._reads = sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error; driver errors become CatalogErrors."""
        with catalog_errors(self.url), self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads (autocommit: each statement sees the latest committed data)."""
        with catalog_errors(self.url), self._reads() as session:
            yield session

    def query(self, fn: Callable[[Session], T]) -> T:
        """`fn(session)` in a read session; retried once on a fresh connection if the pooled one was dead."""
        try:
            with self._reads() as session:
                return fn(session)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                with catalog_errors(self.url):
                    raise
        with self.read() as session:
            return fn(session)

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at; None for a database without a ulpt schema."""
        with catalog_errors(self.url), self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(select(_alembic_version.c.version_num)).scalar()

    def check_schema(self) -> None:
        current = self.schema_revision()
        if current == SCHEMA_REVISION:
            return
        if current is None:
            raise MigrationRequiredError(
                f"catalog {self.url} has no schema yet (this ulpt needs {SCHEMA_REVISION}): "
                "run `ulpt db upgrade`"
            )
        from ulpt.catalog.migrate import known_revisions

        if current not in known_revisions():
            raise MigrationRequiredError(
                f"catalog {self.url} is at schema {current}, which this ulpt does not know "
                f"(it needs {SCHEMA_REVISION}): upgrade ulpt"
            )
        raise MigrationRequiredError(
            f"catalog schema is at {current}, this ulpt needs {SCHEMA_REVISION}: run `ulpt db upgrade`"
        )

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Catalog({self.url!r})"


def open_catalog(url: str, *, auto_upgrade: bool = False, check_schema: bool = True) -> Catalog:
    """Connect to the catalog at `url` and make sure its schema is the one this code expects."""
    catalog = Catalog(create_catalog_engine(url), url)
    try:
        if auto_upgrade and catalog.schema_revision() != SCHEMA_REVISION:
            from ulpt.catalog.migrate import upgrade

            upgrade(catalog.engine)
        if check_schema:
            catalog.check_schema()
    except BaseException:
        catalog.close()
        raise
    return catalog


@contextmanager
def catalog_errors(url: str) -> Iterator[None]:
    """Driver errors a user can act on (server unreachable, file locked) become one-line CatalogErrors."""
    try:
        yield
    except OperationalError as exc:
        raise CatalogError(f"cannot use catalog {url}: {_driver_line(exc)}") from None
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise CatalogError(f"lost the connection to catalog {url}: {_driver_line(exc)}") from None
        raise


def _driver_line(exc: DBAPIError) -> str:
    """The database driver's own message: SQLAlchemy's wrapper adds the SQL and a link to its docs."""
    return first_line(exc.orig if exc.orig is not None else exc)
