"""A registering process killed (SIGKILL) at random points never leaves a row pointing at a missing blob.

Each round forks a fresh process that registers adapters in a loop, waits until it has registered at
least one, lets it run a random while and kills it. Afterwards every catalog row must load (blob
present, SHA-256 and fingerprint intact), and gc with a zero grace period must leave exactly the
referenced blobs in the store.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ulpt.catalog.models import AdapterRow, AdapterTagRow
from ulpt.sdk import Client
from ulpt.store import LocalStore


def _kill_rounds(client: Client, rounds: int, seed: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.catalog.crash_worker"])
    from tests.catalog.crash_worker import register_forever

    rng = random.Random(seed)
    options = getattr(client, "_store_options", {})
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


def _check_consistent(client: Client) -> int:
    """Every row's blob is present and intact; returns the number of rows."""
    with client.catalog.read() as session:
        rows = list(session.execute(select(AdapterRow.name, AdapterRow.version, AdapterRow.blob_key)))
        tagged = session.scalar(select(func.count()).select_from(AdapterTagRow))
    assert rows and tagged == len(rows)  # index rows were committed with their adapter, never apart
    missing = [f"{n}:{v}" for n, v, key in rows if not client.store.exists(key)]
    assert missing == [], f"catalog rows point at missing blobs: {missing[:5]}"
    for name, version, _ in rows[:: max(1, len(rows) // 50)]:
        client.adapters.get(f"{name}:{version}").load()
    return len(rows)


def _crash_and_collect(stack: Client, rounds: int) -> None:
    _kill_rounds(stack, rounds, seed=rounds)
    count = _check_consistent(stack)
    if isinstance(stack.store, LocalStore):  # a writer killed mid-blob leaves a temporary file at most
        assert all(p.name.endswith(".part") for p in (stack.store.root / "tmp").iterdir())
    assert (
        stack.gc(timedelta(hours=1)).orphan_blobs == []
    )  # orphans are young: the grace period protects them
    time.sleep(1.1)  # S3 timestamps have whole seconds
    report = stack.gc(timedelta(0))
    with stack.catalog.read() as session:
        referenced = set(session.scalars(select(AdapterRow.blob_key)))
    assert {entry.key for entry in stack.store.list_blobs()} == referenced
    assert _check_consistent(stack) == count
    print(
        f"{rounds} kills: {count} adapters registered, gc removed {len(report.orphan_blobs)} orphan blob(s)"
    )


def test_sigkill_during_registration(stack: Client) -> None:
    _crash_and_collect(stack, rounds=30)


@pytest.mark.slow
def test_sigkill_during_registration_many_times(stack: Client) -> None:
    _crash_and_collect(stack, rounds=300)
