"""The schema comes only from Alembic, matches the models exactly, and a stale schema is refused clearly."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from tests.services import PostgresServer, free_port
from ulpt.catalog.db import SCHEMA_REVISION, create_catalog_engine, open_catalog, sqlite_url
from ulpt.catalog.migrate import alembic_config, head_revision, migrations_dir, upgrade
from ulpt.catalog.models import Base, JobRow
from ulpt.errors import CatalogError, MigrationRequiredError
from ulpt.sdk import Client


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "empty.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def test_schema_revision_is_the_single_migration_head() -> None:
    assert head_revision() == SCHEMA_REVISION
    assert (migrations_dir() / "env.py").is_file()


def test_upgrade_on_empty_database_matches_models(empty_url: str) -> None:
    engine = create_catalog_engine(empty_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
    open_catalog(empty_url).close()  # passes the schema check


def test_empty_catalog_is_refused_with_upgrade_hint(empty_url: str) -> None:
    with pytest.raises(MigrationRequiredError, match="run `ulpt db upgrade`"):
        open_catalog(empty_url)


def test_catalog_behind_is_refused_with_both_revisions(empty_url: str) -> None:
    engine = create_catalog_engine(empty_url)
    upgrade(engine)
    with engine.begin() as conn:  # pretend an older ulpt created it
        conn.execute(text("UPDATE alembic_version SET version_num = 'base0'"))
    engine.dispose()
    with pytest.raises(MigrationRequiredError, match="does not know"):
        open_catalog(empty_url)


def test_explicit_catalog_never_auto_migrates(tmp_path: Path) -> None:
    client = Client(home=tmp_path, catalog_url=sqlite_url(tmp_path / "shared.db"))
    with pytest.raises(MigrationRequiredError) as info:
        client.adapters.find()
    assert "\n" not in str(info.value)


def test_embedded_default_creates_its_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ULPT_CATALOG_URL", raising=False)
    with Client(home=tmp_path / "home") as client:
        assert client.catalog.schema_revision() == SCHEMA_REVISION
        assert (tmp_path / "home" / "catalog.db").is_file()


def test_unreachable_catalog_is_one_line() -> None:
    url = f"postgresql+psycopg://ulpt:s3cret@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(CatalogError) as info:
        open_catalog(url)
    message = str(info.value)
    assert "\n" not in message and "cannot use catalog" in message
    assert "s3cret" not in message  # the password is masked


@pytest.mark.parametrize(
    ("url", "expected"),
    [("not a url", "invalid catalog URL"), ("mysql://x@h/db", "unsupported catalog URL")],
)
def test_bad_catalog_urls(url: str, expected: str) -> None:
    with pytest.raises(CatalogError, match=expected):
        open_catalog(url)


def test_upgrade_moves_a_jobs_driver_heartbeat_and_attempt_out_of_its_timings(empty_url: str) -> None:
    """Migration 0005: what older drivers kept in `timings` lands in the columns, and only there."""
    engine = create_catalog_engine(empty_url)
    upgrade(engine, "0004")
    old = {"driver": "host:41", "attempt": 2, "heartbeat": "2026-12-06T10:00:05+00:00", "train_s": 3.5}
    jobs = {"01a25272-849b-732d-9be9-e497a764d0f6": old, "01a25272-849b-732d-9be9-e497a764d0f7": None}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (name) VALUES ('acme')"))
        for job_id, timings in jobs.items():
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant, status, spec, n_fits, timings) "
                    "VALUES (:id, 'acme', 'running', :spec, 0, :timings)"
                ),
                {
                    "id": job_id if engine.dialect.name == "postgresql" else job_id.replace("-", ""),
                    "spec": json.dumps({}),
                    "timings": None if timings is None else json.dumps(timings),
                },
            )
    upgrade(engine)
    engine.dispose()
    catalog = open_catalog(empty_url)
    with catalog.read() as session:
        rows = {str(job.id): job for job in session.scalars(select(JobRow))}
    catalog.close()
    moved, untouched = (rows[job_id] for job_id in jobs)
    assert (moved.driver, moved.attempt, moved.timings) == ("host:41", 2, {"train_s": 3.5})
    assert moved.heartbeat_at == datetime(2026, 12, 6, 10, 0, 5, tzinfo=timezone.utc)
    assert (untouched.driver, untouched.attempt, untouched.heartbeat_at, untouched.timings) == (
        None,
        0,
        None,
        None,
    )


def test_upgrade_to_pools_gives_existing_rows_the_defaults_and_downgrades(empty_url: str) -> None:
    """Migration 0006: existing tenants weigh 1, jobs have priority 0, fits no lease; and it reverses."""
    engine = create_catalog_engine(empty_url)
    upgrade(engine, "0005")
    job_id = "01a25272-849b-732d-9be9-e497a764d0f6"
    fit_id = "01a25272-849b-732d-9be9-e497a764d0f7"
    as_key = (lambda value: value) if engine.dialect.name == "postgresql" else (lambda v: v.replace("-", ""))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (name) VALUES ('acme')"))
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, status, spec, n_fits) VALUES (:id, 'acme', 'pending', '{}', 1)"
            ),
            {"id": as_key(job_id)},
        )
        conn.execute(
            text(
                "INSERT INTO fits (id, job_id, key, status, attempts) VALUES (:id, :job, 'k', 'pending', 0)"
            ),
            {"id": as_key(fit_id), "job": as_key(job_id)},
        )
    upgrade(engine)
    with engine.connect() as conn:
        weight = conn.execute(text("SELECT weight FROM tenants")).scalar_one()
        priority = conn.execute(text("SELECT priority FROM jobs")).scalar_one()
        lease = conn.execute(text("SELECT lease_until FROM fits")).scalar_one()
    assert (weight, priority, lease) == (1.0, 0, None)
    command.downgrade(alembic_config(engine), "0005")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("fits")}
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert "lease_until" not in columns and "pool_members" not in tables
