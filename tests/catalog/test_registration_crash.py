"""A registering process killed (SIGKILL) at random points never leaves a row pointing at a missing blob.

Each round forks a fresh process that registers adapters in a loop, waits until it has registered at
least one, lets it run a random while and kills it. Afterwards no catalog row may lack its blob (and
rows load: SHA-256 and fingerprint intact), and gc must leave no orphan older than its grace period:
exactly the referenced blobs stay in the store. Every catalog with every store; `make reliability`
kills 100 processes per combination.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from tests.reliability_fixtures import ReliabilityRun
from ulpt.catalog.models import AdapterRow, AdapterTagRow
from ulpt.sdk import Client
from ulpt.store import LocalStore

GRACE = timedelta(seconds=1)
CI_ROUNDS = {"sqlite+local": 30, "postgresql+s3": 30, "sqlite+s3": 8, "postgresql+local": 8}
"""Fast-tier kills per stack: the embedded and production stacks most, the mixed ones a few."""


def _kill_rounds(client: Client, rounds: int, seed: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.catalog.crash_worker"])
    from tests.catalog.crash_worker import register_forever

    rng = random.Random(seed)
    options = dict(client.store_options)
    for victim in range(rounds):
        ready = ctx.Event()
        proc = ctx.Process(
            target=register_forever,
            args=(client.catalog_url, client.store_url, options, victim, ready),
            daemon=True,
        )
        proc.start()
        assert ready.wait(60), f"victim {victim} never registered anything (exit code {proc.exitcode})"
        proc.join(timeout=rng.uniform(0.0, 0.15))
        assert proc.is_alive(), f"victim {victim} stopped by itself (exit code {proc.exitcode})"
        proc.kill()  # SIGKILL: no cleanup, no atexit, no rollback by the client
        proc.join(timeout=30)
        assert proc.exitcode == -9


def _rows_without_blob(client: Client) -> tuple[int, list[str]]:
    """(catalog rows, `name:version` of those whose blob is missing); also checks tags and loads."""
    with client.catalog.read() as session:
        rows = list(session.execute(select(AdapterRow.name, AdapterRow.version, AdapterRow.blob_key)))
        tagged = session.scalar(select(func.count()).select_from(AdapterTagRow))
    assert rows and tagged == len(rows)  # index rows were committed with their adapter, never apart
    missing = [f"{n}:{v}" for n, v, key in rows if not client.store.exists(key)]
    for name, version, key in rows[:: max(1, len(rows) // 50)]:
        if client.store.exists(key):
            client.adapters.get(f"{name}:{version}").load()  # SHA-256 and fingerprint intact
    return len(rows), missing


def _referenced(client: Client) -> set[str]:
    with client.catalog.read() as session:
        return set(session.scalars(select(AdapterRow.blob_key)))


def _crash_and_collect(stack: Client, rounds: int) -> dict[str, int]:
    """Kill `rounds` registering processes, then check the catalog and collect garbage; returns figures."""
    _kill_rounds(stack, rounds, seed=rounds)
    count, missing = _rows_without_blob(stack)
    assert missing == [], f"catalog rows point at missing blobs: {missing[:5]}"
    partial = 0
    if isinstance(stack.store, LocalStore):  # a writer killed mid-blob leaves a temporary file at most
        leftovers = list((stack.store.root / "tmp").iterdir())
        assert all(p.name.endswith(".part") for p in leftovers)
        partial = len(leftovers)
    orphans_before = len({entry.key for entry in stack.store.list_blobs()} - _referenced(stack))
    assert stack.gc(GRACE * 3600).orphan_blobs == []  # orphans are young: the grace period protects them
    time.sleep(GRACE.total_seconds() + 1.1)  # every orphan is now older than the grace period (S3: whole s)
    report = stack.gc(GRACE)  # what `ulpt gc --grace 1s` runs
    cutoff = datetime.now(timezone.utc) - GRACE
    old_orphans = {entry.key for entry in stack.store.list_blobs(older_than=cutoff)} - _referenced(stack)
    assert old_orphans == set(), f"gc left orphans older than its grace period: {sorted(old_orphans)[:5]}"
    assert {entry.key for entry in stack.store.list_blobs()} == _referenced(stack)
    assert _rows_without_blob(stack) == (count, [])
    return {
        "kills": rounds,
        "adapters_registered": count,
        "rows_without_blob": len(missing),
        "orphan_blobs_before_gc": orphans_before,
        "orphan_blobs_removed_by_gc": len(report.orphan_blobs),
        "orphans_older_than_grace_left_by_gc": len(old_orphans),
        "partial_writes_before_gc": partial,
        "partial_writes_cleaned_by_gc": report.partial_uploads,
    }


@pytest.mark.reliability
def test_sigkill_during_registration(
    every_stack: Client, request: pytest.FixtureRequest, reliability: ReliabilityRun
) -> None:
    combination = request.node.callspec.params["every_stack"]
    figures = _crash_and_collect(every_stack, rounds=reliability.size(CI_ROUNDS[combination], 100))
    section = "registration_crash_" + combination.replace("+", "_")
    reliability.record(section, {"stack": combination, **figures})


@pytest.mark.slow
def test_sigkill_during_registration_many_times(stack: Client) -> None:
    _crash_and_collect(stack, rounds=300)
