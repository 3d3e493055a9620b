"""A fit's rows as one content-addressed JSON blob in the object store, written once at submission.

The blob's bytes are exactly what `dataset_fingerprint` hashes, so its store key is the fingerprint the
fit's catalog row already records: a worker needs nothing else to fetch (and verify) the rows of a fit it
claims, two fits or jobs with the same rows share one blob, and a job keeps training the rows it was
submitted with even after its source files change or disappear. `ulpt gc` keeps the blobs of every job
that is not done (a failed or cancelled job can still be resumed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ulpt.errors import BlobNotFoundError, DataError
from ulpt.store import BlobStore, digest_key

Row = dict[str, Any]
FINGERPRINT_PREFIX = "sha256:"
EXISTS_CHECKS_IN_FLIGHT = 16
"""Parallel existence checks when a job starts: one round trip each on S3, thousands of fits per job."""


def encode_rows(train_rows: Sequence[Row], eval_rows: Sequence[Row]) -> bytes:
    """A fit's split as canonical JSON (sorted keys, UTF-8): the blob's bytes, what its fingerprint hashes."""
    payload = {"train": list(train_rows), "eval": list(eval_rows)}
    return json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()


def dataset_fingerprint(train_rows: Sequence[Row], eval_rows: Sequence[Row]) -> str:
    """SHA-256 of a fit's exact rows and split, the provenance recorded with its adapter."""
    return FINGERPRINT_PREFIX + hashlib.sha256(encode_rows(train_rows, eval_rows)).hexdigest()


def data_key(fingerprint: str) -> str:
    """The store key of the rows behind `fingerprint` (the fingerprint is their blob's SHA-256)."""
    return digest_key(fingerprint)


def write_fit_data(store: BlobStore, splits: Iterable[tuple[Sequence[Row], Sequence[Row]]]) -> int:
    """Store each distinct (train, eval) split once; returns how many distinct blobs were written or reused.

    Content addressing makes this idempotent: a resubmitted job, or two fits with the same rows, reuse the
    blob (its modification time is refreshed, which keeps `ulpt gc` away from it).
    """
    blobs = {}
    for train_rows, eval_rows in splits:
        data = encode_rows(train_rows, eval_rows)
        blobs[hashlib.sha256(data).hexdigest()] = data
    store.put_many(list(blobs.values()))
    return len(blobs)


def read_fit_data(store: BlobStore, key: str, fingerprint: str) -> tuple[list[Row], list[Row]]:
    """(train rows, eval rows) of the fit with `fingerprint`; the store checks the bytes hash to it."""
    try:
        data = store.get(data_key(fingerprint))
    except BlobNotFoundError:
        raise DataError(
            f"fit {key}: its rows ({fingerprint[:19]}...) are missing from the store {store.url}"
        ) from None
    split = json.loads(data)
    return split["train"], split["eval"]


def missing_fit_data(store: BlobStore, fingerprints: Iterable[str]) -> set[str]:
    """The fingerprints whose rows are not in the store (a job submitted before fits had data blobs)."""
    wanted = sorted(set(fingerprints))
    with ThreadPoolExecutor(EXISTS_CHECKS_IN_FLIGHT) as pool:
        found = pool.map(lambda fp: store.exists(data_key(fp)), wanted)
        return {fp for fp, exists in zip(wanted, found) if not exists}
