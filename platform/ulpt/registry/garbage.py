"""Garbage collection: blobs no live adapter names (orphans of interrupted registrations, deleted adapters)
and data blobs no unfinished job needs.

Registration writes the blob before the catalog row, so a crash in between leaves an orphan blob,
never a row without its blob; collection removes such blobs once they are older than a grace period.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ulpt.catalog import adapters as queries
from ulpt.catalog.db import Catalog
from ulpt.catalog.files import live_file_blobs
from ulpt.catalog.jobs import fingerprints_of_open_jobs
from ulpt.catalog.models import utcnow
from ulpt.errors import SpecError
from ulpt.store import BlobStore, digest_key

_BATCH = 500
"""Blobs checked against the catalog per query."""


@dataclass
class GcReport:
    """What `collect_garbage` removed (or would remove, with dry_run)."""

    orphan_blobs: list[str] = field(default_factory=list)
    """Blobs no catalog row names (left by interrupted registrations)."""
    deleted_adapter_blobs: list[str] = field(default_factory=list)
    """Blobs only tombstoned adapters named."""
    bytes_freed: int = 0
    partial_uploads: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "orphan_blobs": len(self.orphan_blobs),
            "deleted_adapter_blobs": len(self.deleted_adapter_blobs),
            "bytes_freed": self.bytes_freed,
            "partial_uploads": self.partial_uploads,
            "dry_run": self.dry_run,
            "keys": self.orphan_blobs + self.deleted_adapter_blobs,
        }


def collect_garbage(
    catalog: Catalog, store: BlobStore, grace: timedelta, *, dry_run: bool = False
) -> GcReport:
    """Delete blobs older than `grace` that no live adapter names: orphans and tombstoned adapters' blobs.

    A job's data blobs (each fit's rows, keyed by its dataset fingerprint) are kept while any job that
    is not done names them, since a failed or cancelled job can be resumed; once only done jobs name
    them they are orphans like any other.

    A registration that reuses an existing blob refreshes its modification time first, so a blob
    becoming referenced again is younger than the grace period and is left alone. The grace period
    must exceed the longest registration (blob written, row not yet committed): 0 is only safe
    while nothing registers.
    """
    if grace < timedelta(0):
        raise SpecError(f"grace period must not be negative, got {grace}")
    cutoff = utcnow() - grace
    report = GcReport(dry_run=dry_run)
    with catalog.read() as session:  # read once: a job submitted later writes blobs younger than cutoff
        needed = {digest_key(fp) for fp in fingerprints_of_open_jobs(session)}
    batch: list[Any] = []
    for entry in store.list_blobs(older_than=cutoff):
        batch.append(entry)
        if len(batch) >= _BATCH:
            _collect(catalog, store, batch, needed, report)
            batch = []
    if batch:
        _collect(catalog, store, batch, needed, report)
    if not dry_run:
        report.partial_uploads = store.cleanup_partial(cutoff)
    return report


def _collect(
    catalog: Catalog, store: BlobStore, entries: list[Any], needed: set[str], report: GcReport
) -> None:
    with catalog.read() as session:
        live, dead = queries.blob_references(session, [e.key for e in entries])
        live = set(live) | live_file_blobs(session, [e.key for e in entries])
    doomed = [e for e in entries if e.key not in live and e.key not in needed]
    for entry in doomed:
        (report.deleted_adapter_blobs if entry.key in dead else report.orphan_blobs).append(entry.key)
        report.bytes_freed += entry.size
    if doomed and not report.dry_run:
        store.delete_many([e.key for e in doomed])
