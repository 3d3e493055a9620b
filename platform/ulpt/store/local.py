"""A folder as an object store: the embedded default, and what tests and single machines use.

Writes go to a temporary file that is then renamed into place, so a blob appears whole or not at
all even if the process is killed mid-write; an existing blob is never rewritten. Blobs are made
read-only on disk to discourage edits behind the catalog's back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ulpt.errors import BlobNotFoundError, StoreError
from ulpt.store.base import BLOB_PREFIX, CHUNK_BYTES, BlobEntry, BlobInfo, BlobStore, sha256_of_key

_TMP = "tmp"


class LocalStore(BlobStore):
    """Blobs under `root/blobs/sha256/ab/cdef...`; temporary files under `root/tmp/`."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        self.fsync = fsync
        """Make new blobs durable before returning: a power cut must not lose a blob the catalog names."""
        self._dirs: set[str] = set()
        self._tmp = str(self.root / _TMP)

    def _path(self, key: str) -> Path:
        sha256_of_key(key)  # refuse anything that is not a blob key (no path traversal)
        return self.root / key

    def _put(self, key: str, data: bytes) -> None:
        final = self._write(str(self._path(key)), data)
        if final is not None and self.fsync:
            _fsync_file(Path(final))
            _fsync_dir(Path(final).parent)

    def put_many(self, blobs: Sequence[bytes]) -> list[BlobInfo]:
        """Write every blob, then make them all durable with ONE syncfs instead of an fsync per blob."""
        infos = []
        written = False
        root = str(self.root)
        for data in blobs:
            info = BlobInfo.of(data)
            written |= self._write(f"{root}/{info.key}", data) is not None  # a key blob_key built
            infos.append(info)
        if self.fsync and written:
            _syncfs(self.root)
        return infos

    def _put_file(self, key: str, path: Path) -> None:
        final = self._write(str(self._path(key)), path)
        if final is not None and self.fsync:
            _fsync_file(Path(final))
            _fsync_dir(Path(final).parent)

    def _write(self, final: str, data: bytes | Path) -> str | None:
        """Write a new blob (temporary file, then rename: whole or absent); None if it already existed.

        Plain `os` calls on strings: a bulk registration writes thousands of few-kB blobs, and pathlib's
        object churn cost more than the system calls themselves.
        """
        if os.path.exists(final):
            self._refresh(final)
            return None
        folder = os.path.dirname(final)
        tmp = f"{self._tmp}/{uuid.uuid4().hex}.part"
        try:
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                os.makedirs(self._tmp, exist_ok=True)
                self._dirs.add(folder)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                if isinstance(data, Path):  # a file: copied in chunks, never held whole
                    with open(data, "rb") as source, os.fdopen(fd, "wb", closefd=False) as target:
                        shutil.copyfileobj(source, target, CHUNK_BYTES)
                else:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            # Atomic. If a concurrent writer got there first it wrote these very bytes (the name is
            # their hash), so replacing its file changes nothing a reader could observe.
            os.replace(tmp, final)
        except OSError as exc:
            self._dirs.clear()  # e.g. the folder was removed under us: recreate next time
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            key = os.path.relpath(final, self.root)
            raise StoreError(f"cannot write blob {key} under {self.root}: {exc.strerror or exc}") from None
        return final

    @staticmethod
    def _refresh(path: str) -> None:
        try:
            os.utime(path)
        except FileNotFoundError:  # removed by gc in between: let the caller's next put write it again
            pass
        except PermissionError:  # e.g. a read-only mount; the blob is there, which is what matters
            pass

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {key} is missing from {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read blob {key} from {self.url}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete blob {key} from {self.url}: {exc.strerror or exc}") from None

    def list_blobs(self, older_than: datetime | None = None) -> Iterator[BlobEntry]:
        cutoff = older_than.timestamp() if older_than is not None else None
        top = self.root / BLOB_PREFIX
        if not top.is_dir():
            return
        for fan in sorted(os.scandir(top), key=lambda e: e.name):
            if not fan.is_dir():
                continue
            for entry in os.scandir(fan.path):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if cutoff is not None and stat.st_mtime >= cutoff:
                    continue
                yield BlobEntry(
                    key=f"{BLOB_PREFIX}{fan.name}/{entry.name}",
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc),
                )

    def cleanup_partial(self, older_than: datetime) -> int:
        tmp_dir = self.root / _TMP
        if not tmp_dir.is_dir():
            return 0
        removed = 0
        for entry in os.scandir(tmp_dir):
            try:
                if entry.stat().st_mtime < older_than.timestamp():
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as a blob store: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"cannot use {self.root} as a blob store: not writable")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` (one device flush for a whole batch instead of one per blob)."""
    libc = _libc()
    if libc is not None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            pass
        else:
            try:
                if libc.syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
    os.sync()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once: `find_library` runs a subprocess (a fork per batch of blobs)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.syncfs  # noqa: B018  # missing on some platforms: then os.sync()
    except (OSError, AttributeError):
        return None
    return libc


def _fsync_dir(path: Path) -> None:
    """Make the new directory entry durable too (a power cut must not lose a blob the catalog names)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
