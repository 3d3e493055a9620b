"""Object store for adapter blobs: a local folder or S3, chosen by URL.

open_store("/data/ulpt/blobs")          # or file:///data/ulpt/blobs
open_store("s3://bucket/prefix")        # endpoint and credentials from AWS_* variables or arguments
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ulpt.errors import StoreError
from ulpt.store.base import BlobEntry, BlobInfo, BlobStore, blob_key, digest_key, sha256_hex, sha256_of_key
from ulpt.store.local import LocalStore

__all__ = [
    "BlobEntry",
    "BlobInfo",
    "BlobStore",
    "LocalStore",
    "blob_key",
    "digest_key",
    "open_store",
    "sha256_hex",
    "sha256_of_key",
]


def open_store(url: str | os.PathLike[str], **options: Any) -> BlobStore:
    """A store for `url`: a folder path, `file://PATH` or `s3://BUCKET[/PREFIX]`.

    `options` go to the store's constructor (for S3: endpoint_url, access_key, secret_key, region,
    multipart_threshold, ...; for a folder: fsync).
    """
    if isinstance(url, os.PathLike):
        return LocalStore(url, **options)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from ulpt.store.s3 import S3Store

        if "@" in parsed.netloc:  # never echo this URL: it holds a secret
            raise StoreError("S3 credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, not in the URL")
        return S3Store(parsed.netloc, unquote(parsed.path), **options)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"file store URL must be file:///ABSOLUTE/PATH, got {url!r}")
        return LocalStore(Path(unquote(parsed.path)), **options)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(url, **options)
    raise StoreError(
        f"unsupported store URL scheme {parsed.scheme!r} in {url!r}: use a folder, file://PATH or s3://BUCKET[/PREFIX]"
    )
