"""What the registry hands out: detached adapter records (which load and verify their blob) and pages.

A record is a frozen copy of a catalog row, usable after its session closed; `load()` checks the
blob's SHA-256, its format, and that the blob and the catalog row describe the same adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ulpt.adapters import Adapter
from ulpt.catalog.models import AdapterRow
from ulpt.errors import (
    AdapterFormatError,
    BlobIntegrityError,
    BlobNotFoundError,
    FingerprintMismatchError,
    NotFoundError,
)
from ulpt.store import BlobStore


@dataclass(frozen=True)
class AdapterRecord:
    """One catalog entry, detached from any database session; `load()` fetches and checks the adapter."""

    id: str
    tenant: str
    name: str
    version: int
    status: str
    method: str
    base_model: str
    hidden_size: int
    n_tokens: int
    rank: int
    seed: int
    generator: str | None
    generator_version: int | None
    projection: str | None
    projection_fingerprint: str | None
    blob_key: str
    blob_sha256: str
    blob_size: int
    num_trainable_params: int
    metrics: dict[str, Any]
    tags: dict[str, str]
    dataset_fingerprint: str | None
    training_config: dict[str, Any] | None
    job_id: str | None
    parent_id: str | None
    public: bool
    created_at: datetime
    deleted_at: datetime | None
    config: dict[str, Any] = field(repr=False)
    _store: BlobStore | None = field(default=None, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """`name:version`, the reference that always means exactly this adapter."""
        return f"{self.name}:{self.version}"

    def load(self) -> Adapter:
        """The adapter, after checking the blob's SHA-256 and the projection fingerprint."""
        if self._store is None:
            raise NotFoundError(f"adapter {self.ref} is not attached to a store")
        return load_adapter(self._store, self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ids and times as strings, the adapter config included."""
        out: dict[str, Any] = {"ref": self.ref}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


_RECORD_FIELDS = tuple(f.name for f in fields(AdapterRecord) if not f.name.startswith("_"))
_ID_FIELDS = ("id", "job_id", "parent_id")


def record_from(row: AdapterRow | Mapping[str, Any], store: BlobStore | None) -> AdapterRecord:
    """A detached record from an ORM row or a row dict (ids become strings)."""
    if isinstance(row, Mapping):
        values = {name: row[name] for name in _RECORD_FIELDS}
    else:
        values = {name: getattr(row, name) for name in _RECORD_FIELDS}
    for name in _ID_FIELDS:
        if values[name] is not None:
            values[name] = str(values[name])
    values["tags"] = dict(values["tags"] or {})
    values["metrics"] = dict(values["metrics"] or {})
    return AdapterRecord(**values, _store=store)


def load_adapter(store: BlobStore, record: AdapterRecord) -> Adapter:
    """Fetch, verify (SHA-256, format, fingerprint vs the blob AND the catalog) and rebuild an adapter."""
    if record.deleted_at is not None:
        raise NotFoundError(f"adapter {record.ref} was deleted")
    try:
        data = store.get(record.blob_key, record.blob_sha256)
    except (BlobNotFoundError, BlobIntegrityError) as exc:
        raise type(exc)(f"adapter {record.ref}: {exc}") from None
    try:
        adapter = Adapter.from_bytes(data)
    except AdapterFormatError as exc:
        raise type(exc)(f"adapter {record.ref}: {exc}") from None
    if (
        record.projection_fingerprint is not None
        and adapter.projection_fingerprint != record.projection_fingerprint
    ):
        raise FingerprintMismatchError(
            f"adapter {record.ref}: its projection fingerprint does not match the one recorded in the catalog"
        )
    _check_matches_record(adapter, record)
    if adapter.base_model is None:
        adapter.base_model = record.base_model
    return adapter


def _check_matches_record(adapter: Adapter, record: AdapterRecord) -> None:
    """The catalog's columns must describe the blob: `find(rank=2)` must never load a rank-16 adapter."""
    config = adapter.config()
    in_blob = {key: config[key] for key in ("method", "hidden_size", "n_tokens", "rank", "seed")}
    in_blob["projection"] = (config["projection"] or {}).get("distribution")
    differ = [
        f"{key} {value!r} in the blob, {getattr(record, key)!r} in the catalog"
        for key, value in in_blob.items()
        if getattr(record, key) != value
    ]
    if differ:
        raise AdapterFormatError(
            f"adapter {record.ref}: its blob does not match its catalog record ({'; '.join(differ)})"
        )


@dataclass(frozen=True)
class Page:
    """One page of `find` results; pass `next_cursor` back as `cursor` for the next (None: last page)."""

    items: tuple[AdapterRecord, ...]
    next_cursor: str | None

    def __iter__(self) -> Iterator[AdapterRecord]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class AliasChange:
    alias: str
    target: AdapterRecord
    previous: str | None
    """`name:version` the alias pointed at before, if it existed."""


@dataclass(frozen=True)
class Lineage:
    """Where an adapter came from and what depends on it, for `ulpt adapters show`."""

    record: AdapterRecord
    parent: AdapterRecord | None
    children: tuple[AdapterRecord, ...]
    aliases: tuple[str, ...]
    job: dict[str, Any] | None
