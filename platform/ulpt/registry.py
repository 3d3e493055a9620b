"""The registration protocol and everything that needs the catalog and the store together.

Write order: the blob first (content-addressed, so a retry or a duplicate costs nothing), then ONE
catalog transaction that creates the tenant and base model if needed, numbers versions and inserts
the rows. A process killed anywhere in between leaves at most an orphan blob, never a row that
points at a missing blob; `collect_garbage` removes orphans once they are older than a grace period.
Reads verify the blob's SHA-256 and the projection fingerprint before handing out an Adapter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.adapters.adapter import FORMAT_VERSION
from ulpt.adapters.limits import read_header
from ulpt.catalog import adapters as queries
from ulpt.catalog.db import Catalog
from ulpt.catalog.find import AdapterQuery, find_adapters
from ulpt.catalog.jobs import as_uuid, fingerprints_of_open_jobs, get_job
from ulpt.catalog.models import AdapterRow, new_id, utcnow
from ulpt.catalog.names import (
    MAX_VERSION,
    check_json,
    check_metrics,
    check_name,
    check_tenant,
    check_version,
    normalize_tags,
    parse_ref,
)
from ulpt.catalog.tenants import ensure_base_model, ensure_tenant
from ulpt.errors import (
    AdapterFormatError,
    BlobIntegrityError,
    BlobNotFoundError,
    ConflictError,
    FingerprintMismatchError,
    NotFoundError,
    SpecError,
    UlptError,
)
from ulpt.store import BlobInfo, BlobStore, digest_key

_RETRIES = 5


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


def _next_version(name: str, last: Mapping[str, int]) -> int:
    """One more than the name's highest version ever, within the catalog's 32-bit version column."""
    version = last.get(name, 0) + 1
    if version > MAX_VERSION:
        raise ConflictError(
            f"adapter {name} has used every version up to {MAX_VERSION}; register under another name"
        )
    return version


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
class Registration:
    """One adapter to register, with everything the catalog records about it."""

    adapter: Adapter | bytes
    """The adapter, or its `to_bytes()` blob (the bulk path, when workers already serialized it)."""
    name: str
    base_model: str | None = None
    """Defaults to the adapter's own base_model."""
    tags: Mapping[str, Any] | Sequence[str] | None = None
    metrics: Mapping[str, Any] | None = None
    version: int | None = None
    """None: one more than the highest version this name ever had."""
    parent: str | uuid.UUID | AdapterRecord | None = None
    """The adapter this one was fine-tuned or derived from (a reference, an id or a record)."""
    dataset_fingerprint: str | None = None
    training_config: Mapping[str, Any] | None = None
    job_id: str | uuid.UUID | None = None
    public: bool = False


@dataclass(frozen=True)
class _Prepared:
    row: dict[str, Any]
    blob: bytes
    parent: str | uuid.UUID | None
    job_id: uuid.UUID | None


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


class Registry:
    """Adapters in one catalog + one store. Methods take the tenant explicitly; the SDK binds it."""

    def __init__(self, catalog: Catalog, store: BlobStore) -> None:
        self.catalog = catalog
        self.store = store

    # ---- registration ------------------------------------------------------------------------

    def register(self, registration: Registration, *, tenant: str) -> AdapterRecord:
        return self.register_many([registration], tenant=tenant)[0]

    def register_many(self, registrations: Sequence[Registration], *, tenant: str) -> list[AdapterRecord]:
        """Register several adapters: all blobs, then one transaction for all rows (all or nothing)."""
        check_tenant(tenant)
        prepared = [_prepare(item) for item in registrations]
        explicit = [(p.row["name"], p.row["version"]) for p in prepared if p.row["version"] is not None]
        if len(set(explicit)) != len(explicit):
            name, version = next(pair for pair in explicit if explicit.count(pair) > 1)
            raise ConflictError(f"adapter {name}:{version} appears twice in one registration batch")
        infos = self.store.put_many([p.blob for p in prepared])
        for attempt in range(_RETRIES):
            try:
                with self.catalog.session() as session:
                    inserted = self._insert(session, tenant, prepared, infos)
                return [record_from(row, self.store) for row in inserted]
            except IntegrityError:
                with self.catalog.read() as session:
                    taken = queries.existing_versions(session, tenant, explicit)
                if taken:
                    name, version = sorted(taken)[0]
                    raise ConflictError(
                        f"adapter {name}:{version} already exists in tenant {tenant!r}"
                    ) from None
                if attempt == _RETRIES - 1:  # auto-numbered versions kept colliding with concurrent writers
                    raise ConflictError(
                        "concurrent registrations of the same names kept colliding; retry"
                    ) from None
        raise AssertionError("unreachable")

    def _insert(
        self, session: Session, tenant: str, prepared: Sequence[_Prepared], infos: Sequence[BlobInfo]
    ) -> list[dict[str, Any]]:
        ensure_tenant(session, tenant)
        for name, hidden in sorted({(p.row["base_model"], p.row["hidden_size"]) for p in prepared}):
            ensure_base_model(session, name, hidden)
        names = {p.row["name"] for p in prepared}
        clashing = queries.alias_names(session, tenant, names)
        if clashing:
            raise ConflictError(
                f"{sorted(clashing)[0]!r} is an alias in tenant {tenant!r}; pick another adapter name"
            )
        for job_id in {p.job_id for p in prepared if p.job_id is not None}:
            get_job(session, job_id, tenant)
        auto = {p.row["name"] for p in prepared if p.row["version"] is None}
        queries.lock_names(session, tenant, auto)
        next_version = queries.max_versions(session, tenant, auto)
        now = utcnow()
        out = []
        for p, info in zip(prepared, infos, strict=True):
            row = dict(p.row, tenant=tenant, id=new_id(), created_at=now, blob_key=info.key)
            row.update(blob_sha256=info.sha256, blob_size=info.size, job_id=p.job_id)
            if row["version"] is None:
                row["version"] = next_version[row["name"]] = _next_version(row["name"], next_version)
            row["parent_id"] = None if p.parent is None else self._parent_id(session, tenant, p.parent)
            out.append(row)
        queries.insert_adapters(session, out)
        return out

    @staticmethod
    def _parent_id(session: Session, tenant: str, parent: str | uuid.UUID) -> uuid.UUID:
        if isinstance(parent, uuid.UUID):
            row = queries.get_by_id(session, parent)
            if row is None or (row.tenant != tenant and not row.public):
                raise NotFoundError(f"parent adapter {parent} does not exist in tenant {tenant!r}")
            return row.id
        return queries.resolve(session, tenant, parent, include_deleted=True).id

    # ---- reads -------------------------------------------------------------------------------

    def get(self, ref: str, *, tenant: str) -> AdapterRecord:
        """`name` (latest live version), `name:version`, or an alias; `other/...` for public adapters."""
        return self.catalog.query(
            lambda session: record_from(queries.resolve(session, tenant, ref), self.store)
        )

    def get_by_id(self, adapter_id: str | uuid.UUID, *, tenant: str) -> AdapterRecord:
        wanted = as_uuid(adapter_id, "adapter id")

        def read(session: Session) -> AdapterRecord:
            row = queries.get_by_id(session, wanted)
            if row is None or (row.tenant != tenant and not row.public):
                raise NotFoundError(f"no adapter with id {adapter_id} in tenant {tenant!r}")
            return record_from(row, self.store)

        return self.catalog.query(read)

    def find(self, query: AdapterQuery) -> Page:
        def read(session: Session) -> Page:
            found, cursor = find_adapters(session, query)
            return Page(tuple(record_from(row, self.store) for row in found), cursor)

        return self.catalog.query(read)

    def lineage(self, ref: str, *, tenant: str) -> Lineage:
        with self.catalog.read() as session:
            row = queries.resolve(session, tenant, ref, include_deleted=True)
            parent = queries.get_by_id(session, row.parent_id) if row.parent_id else None
            children = queries.children_of(session, row.id)
            job = None
            if row.job_id is not None:
                job_row = get_job(session, row.job_id)
                job = {"id": str(job_row.id), "name": job_row.name, "status": job_row.status}
            return Lineage(
                record=record_from(row, self.store),
                parent=record_from(parent, self.store) if parent is not None else None,
                children=tuple(
                    record_from(child, self.store) for child in children if child.tenant == tenant
                ),
                aliases=tuple(queries.aliases_of(session, [row.id]).get(row.id, [])),
                job=job,
            )

    # ---- aliases -----------------------------------------------------------------------------

    def set_alias(self, alias: str, ref: str, *, tenant: str) -> AliasChange:
        with self.catalog.session() as session:
            target = queries.resolve(session, tenant, ref)
            previous = queries.set_alias(session, tenant, alias, target)
            before = queries.get_by_id(session, previous) if previous is not None else None
            return AliasChange(
                alias, record_from(target, self.store), f"{before.name}:{before.version}" if before else None
            )

    def rollback_alias(self, alias: str, *, tenant: str) -> AliasChange:
        with self.catalog.session() as session:
            target, replaced_id = queries.rollback_alias(session, tenant, alias)
            replaced = queries.get_by_id(session, replaced_id)
            previous = f"{replaced.name}:{replaced.version}" if replaced is not None else None
            return AliasChange(alias, record_from(target, self.store), previous)

    def remove_alias(self, alias: str, *, tenant: str) -> None:
        with self.catalog.session() as session:
            queries.remove_alias(session, tenant, alias)

    def list_aliases(self, *, tenant: str) -> list[tuple[str, AdapterRecord]]:
        with self.catalog.read() as session:
            return [(a.alias, record_from(r, self.store)) for a, r in queries.list_aliases(session, tenant)]

    # ---- deletion, export, gc ----------------------------------------------------------------

    def delete(
        self, ref: str, *, tenant: str, all_versions: bool = False, force: bool = False
    ) -> list[AdapterRecord]:
        """Tombstone `name:version` (or every version of `name` with all_versions); returns what was deleted.

        Refuses while an alias points at the adapter unless `force`, which removes those aliases too.
        """
        parsed = parse_ref(ref)
        if parsed.tenant not in (None, tenant):
            raise NotFoundError(f"no adapter {ref!r} in tenant {tenant!r}")
        with self.catalog.session() as session:
            if all_versions:
                if parsed.version is not None:
                    raise SpecError("give a bare name with all_versions (--all), not name:version")
                targets = [
                    r for r in queries.versions_of(session, tenant, parsed.name) if r.deleted_at is None
                ]
                if not targets:
                    raise NotFoundError(f"no live versions of adapter {parsed.name!r} in tenant {tenant!r}")
            elif parsed.version is None:
                is_alias = queries.alias_names(session, tenant, [parsed.name])
                raise SpecError(
                    f"refusing to delete {ref!r} without a version: give "
                    + (
                        "the adapter's name:version (it is an alias)"
                        if is_alias
                        else f"{ref}:VERSION, or --all"
                    )
                )
            else:
                targets = [queries.resolve(session, tenant, parsed)]
            queries.tombstone(session, targets, drop_aliases=force)
            for target in targets:
                session.refresh(target)
            return [record_from(t, self.store) for t in targets]

    def export(
        self, ref: str, folder: str | Path, *, tenant: str, peft: bool = False, base_config: Any | None = None
    ) -> Path:
        """Write the adapter as a ulpt folder (safetensors + config), or with `peft` as PEFT PROMPT_TUNING."""
        adapter = self.get(ref, tenant=tenant).load()
        try:
            return adapter.export_peft(folder, base_config=base_config) if peft else adapter.save(folder)
        except OSError as exc:
            raise UlptError(f"cannot write adapter {ref} to {folder}: {exc.strerror or exc}") from None

    def collect_garbage(self, grace: timedelta, *, dry_run: bool = False) -> GcReport:
        """Delete blobs older than `grace` that no live adapter names: orphans and tombstoned adapters' blobs.

        A job's data blobs (each fit's rows, keyed by its dataset fingerprint) are kept while any job
        that is not done names them, since a failed or cancelled job can be resumed; once only done
        jobs name them they are orphans like any other.

        A registration that reuses an existing blob refreshes its modification time first, so a blob
        becoming referenced again is younger than the grace period and is left alone. The grace period
        must exceed the longest registration (blob written, row not yet committed): 0 is only safe
        while nothing registers.
        """
        if grace < timedelta(0):
            raise SpecError(f"grace period must not be negative, got {grace}")
        cutoff = utcnow() - grace
        report = GcReport(dry_run=dry_run)
        batch: list[Any] = []
        for entry in self.store.list_blobs(older_than=cutoff):
            batch.append(entry)
            if len(batch) >= 500:
                self._collect(batch, report)
                batch = []
        if batch:
            self._collect(batch, report)
        if not dry_run:
            report.partial_uploads = self.store.cleanup_partial(cutoff)
        return report

    def _collect(self, entries: list[Any], report: GcReport) -> None:
        with self.catalog.read() as session:
            live, dead = queries.blob_references(session, [e.key for e in entries])
            live |= {digest_key(fp) for fp in fingerprints_of_open_jobs(session)}
        doomed = [e for e in entries if e.key not in live]
        for entry in doomed:
            (report.deleted_adapter_blobs if entry.key in dead else report.orphan_blobs).append(entry.key)
            report.bytes_freed += entry.size
        if doomed and not report.dry_run:
            self.store.delete_many([e.key for e in doomed])


def blob_config(data: bytes) -> dict[str, Any]:
    """The checked config an `Adapter.to_bytes()` blob carries in its safetensors header (no tensors read).

    Lets the bulk path register blobs that workers already serialized; the tensors themselves are
    checked against this config (shapes, projection fingerprint) whenever the blob is loaded.
    """
    try:
        config = json.loads(read_header(data)[1]["__metadata__"]["adapter_config"])
        if config.get("format_version") != FORMAT_VERSION:
            raise AdapterFormatError(f"unsupported adapter format_version {config.get('format_version')!r}")
        projection = config.get("projection") or {}
        spec = AdapterSpec(
            **{
                key: config[key]
                for key in ("method", "n_tokens", "rank", "seed", "init", "use_shift", "use_scale")
            },
            projection=projection.get("distribution", "xavier_uniform"),
        )
        spec.check_hidden_size(config["hidden_size"])
        if config["num_trainable_params"] != spec.num_trainable_params(config["hidden_size"]):
            raise AdapterFormatError("adapter config's num_trainable_params does not match its shape")
    except (ValueError, KeyError, TypeError, AttributeError, SpecError) as exc:
        if isinstance(exc, AdapterFormatError):
            raise
        raise AdapterFormatError(
            f"not a ulpt adapter blob (bad or missing adapter_config header: {exc})"
        ) from None
    return dict(config)


def _prepare(item: Registration) -> _Prepared:
    """Validate everything that does not need the database, before any byte is written."""
    name = check_name(item.name)
    version = None if item.version is None else check_version(item.version)
    if isinstance(item.adapter, Adapter):
        config, blob = item.adapter.config(), item.adapter.to_bytes()
    elif isinstance(item.adapter, (bytes, bytearray, memoryview)):
        blob = bytes(item.adapter)
        config = blob_config(blob)
    else:
        raise SpecError(
            f"register needs a ulpt.Adapter (or its to_bytes() blob), got {type(item.adapter).__name__}"
        )
    own_base = config.get("base_model")
    base_model = item.base_model or own_base
    if not base_model:
        raise SpecError(f"adapter {name}: base_model is required (the adapter does not name one)")
    if item.base_model and own_base and item.base_model != own_base:
        raise SpecError(f"adapter {name}: base_model {item.base_model!r} is not the adapter's {own_base!r}")
    if item.dataset_fingerprint is not None and (
        not isinstance(item.dataset_fingerprint, str) or len(item.dataset_fingerprint) > 128
    ):
        raise SpecError("dataset_fingerprint must be a string of at most 128 characters")
    parent = item.parent
    if isinstance(parent, AdapterRecord):
        parent = uuid.UUID(parent.id)
    elif parent is not None and not isinstance(parent, (str, uuid.UUID)):
        raise SpecError(f"parent must be a reference, an id or an AdapterRecord, got {type(parent).__name__}")
    proj = config.get("projection") or {}
    training_config = item.training_config
    row = {
        "name": name,
        "version": version,
        "status": "ready",
        "method": config["method"],
        "base_model": base_model,
        "hidden_size": config["hidden_size"],
        "n_tokens": config["n_tokens"],
        "rank": config["rank"],
        "seed": config["seed"],
        "generator": proj.get("generator"),
        "generator_version": proj.get("generator_version"),
        "projection": proj.get("distribution"),
        "projection_fingerprint": proj.get("fingerprint"),
        "config": config,
        "num_trainable_params": config["num_trainable_params"],
        "metrics": check_metrics(item.metrics),
        "tags": normalize_tags(item.tags),
        "dataset_fingerprint": item.dataset_fingerprint,
        "training_config": None
        if training_config is None
        else check_json(dict(training_config), "training_config"),
        "public": bool(item.public),
        "deleted_at": None,
    }
    job_id = None if item.job_id is None else as_uuid(item.job_id)
    return _Prepared(row=row, blob=blob, parent=parent, job_id=job_id)
