"""Loading checks the blob's SHA-256 and the projection fingerprint; gc frees only dead blobs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.services import S3Server
from ulpt.adapters import Adapter
from ulpt.catalog.models import AdapterRow
from ulpt.errors import BlobIntegrityError, BlobNotFoundError, FingerprintMismatchError, NotFoundError
from ulpt.sdk import Client
from ulpt.store import LocalStore

MakeAdapter = Callable[..., Adapter]


def _overwrite(client: Client, key: str, data: bytes, request: pytest.FixtureRequest) -> None:
    store = client.store
    if isinstance(store, LocalStore):
        path = store.root / key
        os.chmod(path, 0o644)
        path.write_bytes(data)
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        s3.client().put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data)  # type: ignore[attr-defined]


def _age(client: Client, seconds: float) -> timedelta:
    """A grace period that every blob written so far is older than."""
    if isinstance(client.store, LocalStore):
        stamp = time.time() - seconds
        for entry in client.store.list_blobs():
            os.utime(client.store.root / entry.key, (stamp, stamp))
        return timedelta(seconds=seconds / 2)
    time.sleep(1.1)  # S3 LastModified has whole-second resolution
    return timedelta(0)


def test_corrupted_blob_is_refused(
    stack: Client, make_adapter: MakeAdapter, request: pytest.FixtureRequest
) -> None:
    record = stack.adapters.register(make_adapter(1), name="a")
    data = bytearray(stack.store.get(record.blob_key))
    data[-1] ^= 0xFF
    _overwrite(stack, record.blob_key, bytes(data), request)
    with pytest.raises(BlobIntegrityError, match=r"adapter a:1: blob .* is corrupted"):
        stack.adapters.get("a").load()


def test_missing_blob_is_refused(stack: Client, make_adapter: MakeAdapter) -> None:
    record = stack.adapters.register(make_adapter(1), name="a")
    stack.store.delete(record.blob_key)
    with pytest.raises(BlobNotFoundError, match=r"adapter a:1: blob .* is missing"):
        record.load()


def test_fingerprint_mismatch_is_refused(client: Client, make_adapter: MakeAdapter) -> None:
    record = client.adapters.register(make_adapter(1), name="a")
    with client.catalog.session() as session:
        session.execute(
            update(AdapterRow)
            .where(AdapterRow.name == "a")
            .values(projection_fingerprint="sha256:" + "0" * 64)
        )
    with pytest.raises(FingerprintMismatchError, match="adapter a:1"):
        client.adapters.get("a").load()
    with pytest.raises(NotFoundError, match="was deleted"):
        client.adapters.delete("a:1")[0].load()
    assert record.load() is not None  # the detached record still carries the true fingerprint


def test_export_ulpt_and_peft(client: Client, make_adapter: MakeAdapter, tmp_path: Path) -> None:
    adapter = make_adapter(3)
    client.adapters.register(adapter, name="e")
    folder = client.adapters.export("e", tmp_path / "ulpt")
    assert Adapter.load(folder).projection_fingerprint == adapter.projection_fingerprint
    peft = client.adapters.export("e:1", tmp_path / "peft", peft=True)
    assert (peft / "adapter_model.safetensors").is_file() and (peft / "adapter_config.json").is_file()


def test_gc_removes_orphans_and_deleted_blobs_after_grace(stack: Client, make_adapter: MakeAdapter) -> None:
    keep = stack.adapters.register(make_adapter(1), name="keep")
    gone = stack.adapters.register(make_adapter(2), name="gone")
    twin = stack.adapters.register(make_adapter(1), name="twin")  # same bytes as `keep`: one shared blob
    orphan = stack.store.put(b"an interrupted registration's blob")
    stack.adapters.delete("gone:1")
    stack.adapters.delete("twin:1")

    assert stack.gc(timedelta(hours=1)).orphan_blobs == []  # everything is younger than the grace period
    grace = _age(stack, 7200)
    dry = stack.gc(grace, dry_run=True)
    assert (dry.orphan_blobs, dry.deleted_adapter_blobs) == ([orphan.key], [gone.blob_key])
    assert stack.store.exists(orphan.key)
    report = stack.gc(grace)
    assert (report.orphan_blobs, report.deleted_adapter_blobs) == ([orphan.key], [gone.blob_key])
    assert not stack.store.exists(orphan.key) and not stack.store.exists(gone.blob_key)
    assert twin.blob_key == keep.blob_key and stack.store.exists(keep.blob_key)  # still used by a live row
    assert stack.adapters.get("keep").load() is not None
    assert stack.gc(timedelta(0)).orphan_blobs == []


def test_reregistering_refreshes_an_old_blob(client: Client, make_adapter: MakeAdapter) -> None:
    """A registration that reuses an old orphan blob makes it young again, so gc leaves it alone."""
    adapter = make_adapter(5)
    orphan = client.store.put(adapter.to_bytes())
    grace = _age(client, 7200)
    client.adapters.register(adapter, name="late")
    assert client.gc(grace).orphan_blobs == []
    assert client.store.exists(orphan.key)
