"""`Registry`: adapters in one catalog and one store, the only door upper layers use to reach either.

Write order: the blobs are durable before their rows commit (content-addressed, so a retry or a
duplicate costs nothing); ONE catalog transaction creates the tenant and base model if needed,
numbers versions and inserts the rows (a big batch records them while its blobs are being written,
and commits once they are). A process killed anywhere leaves at most an orphan blob, never a row
that points at a missing blob; `collect_garbage` removes orphans older than a grace period.
Reads verify the blob's SHA-256 and the projection fingerprint before handing out an Adapter.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ulpt.catalog import adapters as queries
from ulpt.catalog.api_keys import KeyIdentity, identify_api_key
from ulpt.catalog.base_models import ensure_base_model
from ulpt.catalog.db import Catalog
from ulpt.catalog.find import AdapterQuery, find_adapters
from ulpt.catalog.jobs import as_uuid, get_job
from ulpt.catalog.models import new_id, utcnow
from ulpt.catalog.names import check_tenant, parse_ref
from ulpt.catalog.tenants import ensure_tenant
from ulpt.errors import ConflictError, NotFoundError, SpecError, UlptError
from ulpt.registry.files import Files
from ulpt.registry.garbage import GcReport, collect_garbage
from ulpt.registry.records import AdapterRecord, AliasChange, Lineage, Page, record_from
from ulpt.registry.registration import Prepared, Registration, prepare, version_after
from ulpt.registry.view import Adapters
from ulpt.store import BlobInfo, BlobStore

_RETRIES = 5
_OVERLAP_FROM = 32
"""Batches this big write their blobs while the rows are recorded (`Registry._writing`)."""


class Registry:
    """Adapters in one catalog + one store. Methods take the tenant explicitly; `for_tenant` binds it."""

    def __init__(self, catalog: Catalog, store: BlobStore) -> None:
        self.catalog = catalog
        self.store = store

    def for_tenant(self, tenant: str) -> Adapters:
        """The adapters as `tenant` sees them: its own, and others' public ones where it asks for them."""
        return Adapters(self, check_tenant(tenant))

    # ---- registration ------------------------------------------------------------------------

    def register(self, registration: Registration, *, tenant: str) -> AdapterRecord:
        return self.register_many([registration], tenant=tenant)[0]

    def register_many(self, registrations: Sequence[Registration], *, tenant: str) -> list[AdapterRecord]:
        """Register several adapters: all blobs, and one transaction for all rows (all or nothing)."""
        check_tenant(tenant)
        prepared = [prepare(item) for item in registrations]
        explicit = [(p.row["name"], p.row["version"]) for p in prepared if p.row["version"] is not None]
        if len(set(explicit)) != len(explicit):
            name, version = next(pair for pair in explicit if explicit.count(pair) > 1)
            raise ConflictError(f"adapter {name}:{version} appears twice in one registration batch")
        infos = [BlobInfo.of(p.blob) for p in prepared]
        with self._writing([p.blob for p in prepared]) as blobs_written:
            for attempt in range(_RETRIES):
                try:
                    with self.catalog.session() as session:
                        inserted = self._insert(session, tenant, prepared, infos)
                        blobs_written()  # every blob durable BEFORE the rows commit
                    return [record_from(row, self.store) for row in inserted]
                except IntegrityError:
                    with self.catalog.read() as session:
                        taken = queries.existing_versions(session, tenant, explicit)
                    if taken:
                        name, version = sorted(taken)[0]
                        raise ConflictError(
                            f"adapter {name}:{version} already exists in tenant {tenant!r}"
                        ) from None
                    if attempt == _RETRIES - 1:  # auto-numbered versions kept colliding with others
                        raise ConflictError(
                            "concurrent registrations of the same names kept colliding; retry"
                        ) from None
        raise AssertionError("unreachable")

    @contextmanager
    def _writing(self, blobs: Sequence[bytes]) -> Iterator[Callable[[], object]]:
        """Write `blobs` to the store while the caller records their rows; yields "wait until durable".

        The rows name blobs by hash, known before a byte is written, so a big batch writes its blobs
        on a second thread while the catalog transaction runs (the store's system calls and the
        database's round trips overlap instead of adding up). The caller waits for the blobs before it
        commits, so a row is never visible without its blob: a crash before then leaves orphan blobs
        at most, which `collect_garbage` removes. Small batches write first, on the caller's thread.
        """
        if len(blobs) < _OVERLAP_FROM:
            self.store.put_many(blobs)
            yield lambda: None
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ulpt-blobs") as pool:
            written = pool.submit(self.store.put_many, blobs)
            try:
                yield written.result
            finally:
                written.cancel()  # not started yet (the caller failed first): nothing to write

    def _insert(
        self, session: Session, tenant: str, prepared: Sequence[Prepared], infos: Sequence[BlobInfo]
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
                row["version"] = next_version[row["name"]] = version_after(row["name"], next_version)
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
        """The adapter's lineage as `tenant` may see it: of another tenant's public adapter, only what
        is public too (no private parent, no aliases, no job: those are the owner's)."""
        with self.catalog.read() as session:
            row = queries.resolve(session, tenant, ref, include_deleted=True)
            own = row.tenant == tenant
            parent = queries.get_by_id(session, row.parent_id) if row.parent_id else None
            if parent is not None and parent.tenant != tenant and not parent.public:
                parent = None
            children = queries.children_of(session, row.id)
            job = None
            if row.job_id is not None and own:
                job_row = get_job(session, row.job_id)
                job = {"id": str(job_row.id), "name": job_row.name, "status": job_row.status}
            return Lineage(
                record=record_from(row, self.store),
                parent=record_from(parent, self.store) if parent is not None else None,
                children=tuple(
                    record_from(child, self.store) for child in children if child.tenant == tenant
                ),
                aliases=tuple(queries.aliases_of(session, [row.id]).get(row.id, [])) if own else (),
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
        """Delete blobs older than `grace` that no live adapter names (see `ulpt.registry.garbage`)."""
        return collect_garbage(self.catalog, self.store, grace, dry_run=dry_run)

    # ---- what adapters point to ---------------------------------------------------------------

    def record_base_model(self, name: str, hidden_size: int, *, revision: str, family: str | None) -> None:
        """Record a base model's weights fingerprint; ConflictError if its name has other weights."""
        with self.catalog.session() as session:
            ensure_base_model(session, name, hidden_size, revision=revision, family=family)

    def tenant_for_key(self, key: str) -> str | None:
        """The tenant an HTTP API key belongs to, or None for an unknown, malformed or revoked key."""
        identity = self.identity_for_key(key)
        return identity.tenant if identity is not None else None

    def identity_for_key(self, key: str) -> KeyIdentity | None:
        """The tenant and scopes of an HTTP API key, or None for an unknown, malformed or revoked key."""
        with self.catalog.read() as session:
            return identify_api_key(session, key)

    def files(self, tenant: str) -> Files:
        """The data files `tenant` uploaded over HTTP (a tenant-bound view, like `for_tenant`)."""
        return Files(self, check_tenant(tenant))
