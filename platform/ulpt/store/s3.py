"""S3 (or any S3-compatible server) as the object store, through boto3.

Small blobs are written with one conditional PUT (`If-None-Match: *`), so an existing key is never
overwritten; large ones go through boto3's managed multipart upload (`TransferConfig`). Endpoint,
region and credentials come from arguments or the usual AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`). Errors become one-line StoreErrors that
never include a secret.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ulpt.errors import BlobNotFoundError, StoreError, redact_url
from ulpt.store.base import BLOB_PREFIX, BlobEntry, BlobInfo, BlobStore, sha256_of_key

_AUTH_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_session_lock = threading.Lock()
_session: Any = None


def _boto3_session() -> Any:
    """One boto3 session per process: each new session reloads botocore's service models (~0.1 s)."""
    global _session
    with _session_lock:
        if _session is None:
            import boto3

            _session = boto3.session.Session()
        return _session


class S3Store(BlobStore):
    """Blobs at `s3://bucket/prefix/blobs/sha256/ab/cdef...`."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 16 * 1024 * 1024,
        multipart_chunksize: int = 8 * 1024 * 1024,
        max_workers: int = 16,
    ) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise StoreError("S3 store URL needs a bucket: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = (
            endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.multipart_threshold = multipart_threshold
        self.max_workers = max_workers
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )
        self._conditional_put = True
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=max(10, max_workers),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",  # we verify SHA-256 ourselves
        )
        self._client = _boto3_session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            config=config,
        )

    def _object(self, key: str) -> str:
        sha256_of_key(key)
        return self.prefix + key

    def _put(self, key: str, data: bytes) -> None:
        obj = self._object(key)
        try:
            if len(data) >= self.multipart_threshold or not self._conditional_put:
                if self._head(obj):
                    self._refresh(obj)
                    return
                self._client.upload_fileobj(io.BytesIO(data), self.bucket, obj, Config=self._transfer)
                return
            self._client.put_object(Bucket=self.bucket, Key=obj, Body=data, IfNoneMatch="*")
        except Exception as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                self._refresh(obj)  # already stored (content-addressed: same bytes)
                return
            if code in ("NotImplemented", "501") and self._conditional_put:
                self._conditional_put = False  # a server without conditional writes: head, then put
                self._put(key, data)
                return
            raise self._error(exc, f"write blob {key}") from None

    def _put_file(self, key: str, path: Path) -> None:
        """A file streams to S3 in parts (boto3's managed transfer); nothing is written if it is there."""
        obj = self._object(key)
        try:
            if self._head(obj):
                self._refresh(obj)
                return
            self._client.upload_file(str(path), self.bucket, obj, Config=self._transfer)
        except Exception as exc:
            raise self._error(exc, f"write blob {key}") from None

    def put_many(self, blobs: Sequence[bytes]) -> list[BlobInfo]:
        if len(blobs) <= 1:
            return [self.put(data) for data in blobs]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(blobs))) as pool:
            return list(pool.map(self.put, blobs))

    def _refresh(self, obj: str) -> None:
        """Copy the object onto itself so its LastModified restarts the gc grace period."""
        try:
            self._client.copy_object(
                Bucket=self.bucket,
                Key=obj,
                CopySource={"Bucket": self.bucket, "Key": obj},
                MetadataDirective="REPLACE",
            )
        except Exception as exc:
            if _error_code(exc) in _MISSING:
                return
            raise self._error(exc, f"refresh blob {obj}") from None

    def _head(self, obj: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=obj)
            return True
        except Exception as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise

    def _get(self, key: str) -> bytes:
        obj = self._object(key)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=obj)["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as exc:
            if _error_code(exc) in _MISSING:
                raise BlobNotFoundError(f"blob {key} is missing from {self.url}") from None
            raise self._error(exc, f"read blob {key}") from None

    def exists(self, key: str) -> bool:
        try:
            return self._head(self._object(key))
        except Exception as exc:
            raise self._error(exc, f"look up blob {key}") from None

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except Exception as exc:
            if _error_code(exc) in _MISSING:
                return
            raise self._error(exc, f"delete blob {key}") from None

    def delete_many(self, keys: Iterable[str]) -> None:
        objs = [self._object(k) for k in keys]
        for start in range(0, len(objs), 1000):  # S3's limit per DeleteObjects request
            batch = [{"Key": o} for o in objs[start : start + 1000]]
            try:
                result = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise self._error(exc, "delete blobs") from None
            errors = [e for e in result.get("Errors", []) if e.get("Code") not in _MISSING]
            if errors:
                first = errors[0]
                raise StoreError(
                    f"cannot delete blob {first.get('Key')} from {self.url}: {first.get('Code')}"
                )

    def list_blobs(self, older_than: datetime | None = None) -> Iterator[BlobEntry]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + BLOB_PREFIX):
                for item in page.get("Contents", []):
                    modified = item["LastModified"].astimezone(timezone.utc)
                    if older_than is not None and modified >= older_than:
                        continue
                    yield BlobEntry(key=item["Key"][len(self.prefix) :], size=item["Size"], modified=modified)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(exc, "list blobs") from None

    def cleanup_partial(self, older_than: datetime) -> int:
        """Abort multipart uploads that a killed writer left behind (they hold storage until aborted)."""
        aborted = 0
        try:
            uploads = self._client.list_multipart_uploads(
                Bucket=self.bucket, Prefix=self.prefix + BLOB_PREFIX
            )
            for upload in uploads.get("Uploads", []):
                if upload["Initiated"].astimezone(timezone.utc) < older_than:
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except Exception as exc:
            raise self._error(exc, "clean up multipart uploads") from None
        return aborted

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._error(exc, "open the store") from None

    def _error(self, exc: Exception, action: str) -> StoreError:
        """One line that says what failed and what to check; never echoes credentials."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError
        from botocore.exceptions import ConnectionError as EndpointError

        where = redact_url(self.url) + (f" at {redact_url(self.endpoint_url)}" if self.endpoint_url else "")
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile"
            )
        if isinstance(exc, EndpointError):
            return StoreError(f"cannot reach the S3 endpoint for {where}: is the server running?")
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in _AUTH_ERRORS or code == "403":
                return StoreError(
                    f"S3 refused the credentials for {where} ({code}): "
                    "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket policy"
                )
            if code in ("NoSuchBucket",) or (code == "404" and action == "open the store"):
                return StoreError(f"S3 bucket {self.bucket!r} does not exist at {where}")
            message = exc.response.get("Error", {}).get("Message", "")
            return StoreError(f"cannot {action} in {where}: {code} {message}".strip())
        return StoreError(f"cannot {action} in {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
