"""Catalog fixtures: catalog tests run on SQLite and a real PostgreSQL; store tests on a folder and S3;
`cli` runs `ulpt` in-process against a fresh catalog, as a user would."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.services import PostgresServer, S3Server
from ulpt.adapters import Adapter, AdapterSpec
from ulpt.catalog.db import create_catalog_engine, sqlite_url
from ulpt.catalog.migrate import upgrade
from ulpt.catalog.models import Base
from ulpt.sdk import Client
from ulpt.store import BlobStore, open_store

CATALOGS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.service)]
STORES = ["local", pytest.param("s3", marks=pytest.mark.service)]
HIDDEN = 32


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite catalog, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("catalog-template") / "catalog.db"
    engine = create_catalog_engine(sqlite_url(path))
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_catalog(postgres_server: PostgresServer) -> str:
    """One migrated PostgreSQL database for the session; `fresh_postgres_url` empties it before each test."""
    url = postgres_server.create_database("ulpt_tests")
    engine = create_catalog_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture()
def fresh_postgres_url(postgres_catalog: str) -> str:
    """The session's PostgreSQL catalog, emptied (TRUNCATE: ~50 ms, where CREATE DATABASE takes ~300 ms)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_catalog)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()
    return postgres_catalog


@pytest.fixture(params=CATALOGS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated, empty catalog."""
    if request.param == "sqlite":
        path = tmp_path / "catalog.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return sqlite_url(path)
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture(params=STORES)
def store_url_and_options(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, object]]:
    if request.param == "local":
        return str(tmp_path / "blobs"), {}
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    return f"s3://{bucket}/ulpt-{uuid.uuid4().hex[:6]}", dict(server.store_options())


@pytest.fixture()
def blob_store(store_url_and_options: tuple[str, dict[str, object]]) -> BlobStore:
    url, options = store_url_and_options
    return open_store(url, **options)


@pytest.fixture()
def client(catalog_url: str, tmp_path: Path) -> Iterator[Client]:
    """A client on each catalog backend, with a local store."""
    with Client(home=tmp_path / "home", catalog_url=catalog_url, store_url=str(tmp_path / "blobs")) as c:
        yield c


@pytest.fixture()
def make_adapter() -> Callable[..., Adapter]:
    def make(
        seed: int = 0, *, method: str = "ulpt", n_tokens: int = 4, rank: int = 2, hidden: int = HIDDEN
    ) -> Adapter:
        spec = AdapterSpec(method=method, n_tokens=n_tokens, rank=rank, seed=seed)
        return Adapter.create(spec, hidden_size=hidden, base_model="tiny-llama")

    return make


def _open_stack(request: pytest.FixtureRequest, tmp_path: Path, combination: str) -> Client:
    """A client on `catalog+store`: sqlite or postgresql (real server), local or s3 (real SeaweedFS)."""
    catalog, store = combination.split("+")
    if catalog == "sqlite":
        path = tmp_path / "catalog.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = sqlite_url(path)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    if store == "local":
        return Client(home=tmp_path, catalog_url=url, store_url=str(tmp_path / "blobs"))
    s3: S3Server = request.getfixturevalue("s3_server")
    bucket = s3.create_bucket()
    return Client(
        home=tmp_path, catalog_url=url, store_url=f"s3://{bucket}/ulpt", store_options=s3.store_options()
    )


@pytest.fixture(params=["sqlite+local", pytest.param("postgresql+s3", marks=pytest.mark.service)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """The embedded stack and the production stack (real PostgreSQL + real S3), end to end."""
    with _open_stack(request, tmp_path, request.param) as client:
        yield client


@pytest.fixture(
    params=[
        "sqlite+local",
        pytest.param("sqlite+s3", marks=pytest.mark.service),
        pytest.param("postgresql+local", marks=pytest.mark.service),
        pytest.param("postgresql+s3", marks=pytest.mark.service),
    ]
)
def every_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """Every catalog with every store (the test's callspec param names which)."""
    with _open_stack(request, tmp_path, request.param) as client:
        yield client


_registered = False


class Cli:
    """`cli("adapters", "list")` runs the real entry point; `.err` keeps the last run's stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys, self.monkeypatch = capsys, monkeypatch
        self.err = ""

    def __call__(self, *args: str, code: int = 0) -> str:
        """Run `ulpt ARGS` in-process via ulpt.cli.main; returns stdout, checks the exit code."""
        import ulpt.cli

        global _registered
        if not _registered:  # main() registers the sub-commands on every call; once is enough here
            ulpt.cli._register_commands()
            _registered = True
        self.monkeypatch.setattr(ulpt.cli, "_register_commands", lambda: None)
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", ["ulpt", *args])
        with pytest.raises(SystemExit) as info:
            ulpt.cli.main()
        out, err = self.capsys.readouterr()
        self.err = err
        assert (info.value.code or 0) == code, f"exit {info.value.code}: {out}\n{err}"
        if code:
            assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
            return err
        return out

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json"))


@pytest.fixture()
def cli(
    catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    """The CLI pointed at a fresh catalog and store through the environment, as a user would."""
    monkeypatch.setenv("ULPT_CATALOG_URL", catalog_url)
    monkeypatch.setenv("ULPT_STORE_URL", str(tmp_path / "blobs"))
    monkeypatch.setenv("COLUMNS", "200")
    return Cli(capsys, monkeypatch)
