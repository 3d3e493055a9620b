"""The object-store contract: content-addressed, immutable blobs whose bytes are checked on every read.

A blob's key is derived from the SHA-256 of its bytes, so writing the same adapter twice stores it once,
a key can never point at different bytes, and any reader can verify what it downloaded without asking
the catalog. Stores never overwrite: a put of an existing key only refreshes its modification time, so
that `ulpt gc` (which deletes unreferenced blobs older than a grace period) never races a registration
that reuses an old blob.
"""

from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ulpt.errors import BlobIntegrityError, StoreError

BLOB_PREFIX = "blobs/sha256/"
CHUNK_BYTES = 1 << 20
"""How much of a file `put_file` holds at once."""
_KEY = re.compile(r"^blobs/sha256/([0-9a-f]{2})/([0-9a-f]{62})$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(sha256: str) -> str:
    """`blobs/sha256/ab/cdef...`: two hex characters of fan-out keep folders and S3 listings small."""
    return f"{BLOB_PREFIX}{sha256[:2]}/{sha256[2:]}"


def digest_key(digest: str) -> str:
    """The key of the blob whose bytes hash to `digest` ("sha256:HEX", how fingerprints are written)."""
    return blob_key(digest.removeprefix("sha256:"))


def sha256_of_key(key: str) -> str:
    match = _KEY.match(key)
    if match is None:
        raise StoreError(f"not a blob key: {key!r} (expected {BLOB_PREFIX}<2 hex>/<62 hex>)")
    return match.group(1) + match.group(2)


@dataclass(frozen=True)
class BlobInfo:
    """What the catalog records about a stored blob."""

    key: str
    sha256: str
    size: int

    @classmethod
    def of(cls, data: bytes) -> BlobInfo:
        """What storing `data` records, known before (or while) it is written: its key is its hash."""
        sha = sha256_hex(data)
        return cls(key=blob_key(sha), sha256=sha, size=len(data))


@dataclass(frozen=True)
class BlobEntry:
    """A blob as listed by the store, for garbage collection."""

    key: str
    size: int
    modified: datetime
    """Time of the last write or refresh (timezone-aware, UTC)."""


class BlobStore(ABC):
    """Immutable content-addressed blobs; `LocalStore` and `S3Store` implement the storage primitives."""

    url: str
    """Where the blobs live, for messages; never contains credentials."""

    def put(self, data: bytes) -> BlobInfo:
        """Store `data` under its content key; a no-op (plus a refresh) if it is already there."""
        info = BlobInfo.of(data)
        self._put(info.key, data)
        return info

    def put_file(self, path: str | os.PathLike[str]) -> BlobInfo:
        """Store the file at `path` as a blob, reading it in chunks: memory stays the same whatever its
        size (uploads of tenants), where `put` holds the bytes."""
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as source:
            while chunk := source.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
        info = BlobInfo(key=blob_key(digest.hexdigest()), sha256=digest.hexdigest(), size=size)
        self._put_file(info.key, Path(path))
        return info

    def _put_file(self, key: str, path: Path) -> None:
        """Write the file at `path` at `key` (as `_put`); stores that can copy in chunks override this."""
        self._put(key, path.read_bytes())

    def put_many(self, blobs: Sequence[bytes]) -> list[BlobInfo]:
        """Store several blobs; remote stores override this to upload in parallel."""
        return [self.put(data) for data in blobs]

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """The blob's bytes, after checking they hash to `sha256` (default: the hash in the key)."""
        expected = sha256 or sha256_of_key(key)
        data = self._get(key)
        actual = sha256_hex(data)
        if actual != expected:
            raise BlobIntegrityError(
                f"blob {key} in {self.url} is corrupted: SHA-256 {actual[:12]}... expected {expected[:12]}..."
            )
        return data

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None:
        """Write `data` at `key` unless the key exists; if it exists, refresh its modification time."""

    @abstractmethod
    def _get(self, key: str) -> bytes:
        """Raw bytes at `key`; raises BlobNotFoundError when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; deleting a missing blob is not an error (gc may run twice)."""

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    @abstractmethod
    def list_blobs(self, older_than: datetime | None = None) -> Iterator[BlobEntry]:
        """Every blob, or only those last written before `older_than`."""

    @abstractmethod
    def cleanup_partial(self, older_than: datetime) -> int:
        """Remove leftovers of interrupted writes (temporary files, multipart uploads); returns how many."""

    @abstractmethod
    def check(self) -> None:
        """Raise a StoreError with one clear line if the store cannot be reached or refuses access."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
