"""Object stores (a folder, a real S3 server): content addressing, immutability, integrity, errors."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.services import S3Server, free_port
from ulpt.errors import BlobIntegrityError, BlobNotFoundError, StoreError
from ulpt.store import BlobStore, LocalStore, blob_key, open_store
from ulpt.store.base import BlobInfo


def _corrupt(store: BlobStore, key: str, data: bytes, s3: S3Server | None) -> None:
    """Change a blob's bytes behind the store's back."""
    if isinstance(store, LocalStore):
        path = store.root / key
        os.chmod(path, 0o644)
        path.write_bytes(data)
        return
    assert s3 is not None
    s3.client().put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data)  # type: ignore[attr-defined]


def _s3(request: pytest.FixtureRequest) -> S3Server | None:
    return request.getfixturevalue("s3_server") if "s3" in request.node.callspec.id else None


def test_put_get_is_content_addressed(blob_store: BlobStore) -> None:
    data = b"adapter bytes" * 100
    info = blob_store.put(data)
    sha = hashlib.sha256(data).hexdigest()
    assert (info.sha256, info.size, info.key) == (sha, len(data), f"blobs/sha256/{sha[:2]}/{sha[2:]}")
    assert info.key == blob_key(sha) and blob_store.exists(info.key)
    assert blob_store.get(info.key) == data
    assert blob_store.put(data) == info  # idempotent
    assert [e.key for e in blob_store.list_blobs()] == [info.key]


def test_existing_blob_is_never_overwritten(blob_store: BlobStore, request: pytest.FixtureRequest) -> None:
    data = b"original"
    info = blob_store.put(data)
    _corrupt(blob_store, info.key, b"tampered", _s3(request))
    blob_store.put(data)  # the key exists: the store leaves it alone (and refreshes its time)
    with pytest.raises(BlobIntegrityError, match="corrupted"):
        blob_store.get(info.key)


def test_missing_blob(blob_store: BlobStore) -> None:
    key = blob_key("ab" * 32)
    assert not blob_store.exists(key)
    with pytest.raises(BlobNotFoundError, match="is missing"):
        blob_store.get(key)
    blob_store.delete(key)  # deleting twice is fine (gc may run twice)


def test_keys_must_be_blob_keys(blob_store: BlobStore) -> None:
    for key in ("../etc/passwd", "blobs/sha256/zz/" + "0" * 62, "blobs/sha256/ab/../../x"):
        with pytest.raises(StoreError, match="not a blob key"):
            blob_store.get(key)


def test_list_older_than_and_delete(blob_store: BlobStore) -> None:
    old = blob_store.put(b"old")
    if isinstance(blob_store, LocalStore):
        stamp = time.time() - 7200
        os.utime(blob_store.root / old.key, (stamp, stamp))
        cutoff = datetime.now(timezone.utc) - timedelta(hours=1)
    else:  # S3 LastModified has 1 s resolution: compare against "now + 2 s" instead of aging the object
        time.sleep(1.1)
        cutoff = datetime.now(timezone.utc)
    new = blob_store.put(b"new") if isinstance(blob_store, LocalStore) else None
    keys = {e.key for e in blob_store.list_blobs(older_than=cutoff)}
    assert old.key in keys and (new is None or new.key not in keys)
    blob_store.delete_many([old.key])
    assert not blob_store.exists(old.key)


def test_put_many(blob_store: BlobStore) -> None:
    blobs = [f"blob {i}".encode() for i in range(40)]
    infos = blob_store.put_many(blobs)
    assert [blob_store.get(i.key) for i in infos] == blobs
    assert len(list(blob_store.list_blobs())) == 40


def test_local_store_writes_atomically(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    info = store.put(b"x" * 1000)
    assert not any((tmp_path / "s" / "tmp").iterdir())
    assert (tmp_path / "s" / info.key).stat().st_mode & 0o222 == 0  # read-only on disk
    (tmp_path / "s" / "tmp" / "dead.part").write_bytes(b"partial")
    assert store.cleanup_partial(datetime.now(timezone.utc) + timedelta(seconds=1)) == 1


@pytest.mark.parametrize(
    ("url", "kind"),
    [("/a/b", "LocalStore"), ("file:///a/b", "LocalStore"), ("s3://bucket/pre/fix", "S3Store")],
)
def test_store_urls(url: str, kind: str) -> None:
    store = open_store(url, **({"access_key": "k", "secret_key": "s"} if kind == "S3Store" else {}))
    assert type(store).__name__ == kind
    if kind == "S3Store":
        assert store.url == "s3://bucket/pre/fix" and store.prefix == "pre/fix/"  # type: ignore[attr-defined]


def test_unsupported_store_url() -> None:
    with pytest.raises(StoreError, match="unsupported store URL scheme 'gs'"):
        open_store("gs://bucket/x")


# ---- S3 only -----------------------------------------------------------------------------------


@pytest.mark.service
def test_s3_wrong_secret_is_refused_in_one_line(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    options = s3_server.store_options() | {"secret_key": "definitely-wrong-secret"}
    store = open_store(f"s3://{bucket}/x", **options)
    with pytest.raises(StoreError) as info:
        store.put(b"data")
    message = str(info.value)
    assert "refused the credentials" in message and "SignatureDoesNotMatch" in message
    assert "definitely-wrong-secret" not in message and "\n" not in message
    with pytest.raises(StoreError, match="refused the credentials"):
        store.check()
    unknown = open_store(f"s3://{bucket}/x", **(s3_server.store_options() | {"access_key": "nobody"}))
    with pytest.raises(StoreError, match="InvalidAccessKeyId"):
        unknown.get(blob_key("ab" * 32))


@pytest.mark.service
def test_s3_missing_bucket_and_unreachable_endpoint(s3_server: S3Server) -> None:
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        open_store("s3://no-such-bucket-here", **s3_server.store_options()).check()
    dead = s3_server.store_options() | {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
    store = open_store("s3://bucket", **dead)
    with pytest.raises(StoreError, match="cannot reach the S3 endpoint"):
        store.check()


@pytest.mark.service
def test_s3_multipart_upload_of_a_large_blob(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    store = open_store(
        f"s3://{bucket}/big",
        **s3_server.store_options(),
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
    )
    data = os.urandom(12 * 1024 * 1024 + 17)
    info = store.put(data)
    head = s3_server.client().head_object(Bucket=bucket, Key="big/" + info.key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert store.get(info.key) == data
    assert store.put(data) == info  # exists: no second upload


@pytest.mark.service
def test_s3_store_reads_credentials_from_the_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.create_bucket()
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = open_store(f"s3://{bucket}")
    assert store.get(store.put(b"env").key) == b"env"


def test_credentials_in_a_store_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(StoreError) as info:
        open_store("s3://AKIA:topsecret@bucket/x")
    assert "topsecret" not in str(info.value) and "AWS_SECRET_ACCESS_KEY" in str(info.value)


def test_an_unreachable_endpoint_is_named_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://admin:hunter2@127.0.0.1:{free_port()}/s3")
    store = open_store("s3://bucket", access_key="a", secret_key="b")
    with pytest.raises(StoreError, match="cannot reach the S3 endpoint") as info:
        store.check()
    assert "hunter2" not in str(info.value) and "admin" not in str(info.value)
    assert "http://***@127.0.0.1:" in str(info.value)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7, 3 << 20])
def test_put_file_stores_what_put_would(blob_store: BlobStore, tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path = tmp_path / "upload.jsonl"
    path.write_bytes(data)
    info = blob_store.put_file(path)  # read in chunks: an upload never sits whole in memory
    assert info == BlobInfo.of(data)
    assert blob_store.get(info.key) == data
    assert blob_store.put_file(path) == info  # already there: nothing rewritten, same key
