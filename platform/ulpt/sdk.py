"""The Python SDK: `ulpt.Client`, one object that reaches the catalog, the store (and later Ray).

    client = ulpt.Client()                                  # embedded: SQLite + folder under ULPT_HOME
    client = ulpt.Client(catalog_url="postgresql+psycopg://ulpt@db/ulpt", store_url="s3://bucket/adapters")
    record = client.adapters.register(adapter, name="user-42", base_model="smollm2", tags={"task": "sst2"})
    client.adapters.get("user-42:1").load()

Settings: explicit arguments, else ULPT_CATALOG_URL / ULPT_STORE_URL, else the embedded default under
`home` (ULPT_HOME, default ./.ulpt): `catalog.db` and `blobs/`. The embedded catalog creates and
upgrades its own schema; any other catalog must be upgraded with `ulpt db upgrade`.
Connections open lazily, on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

from ulpt.adapters import Adapter
from ulpt.catalog import Catalog, NewApiKey, open_catalog, sqlite_url
from ulpt.catalog.find import query_from
from ulpt.catalog.jobs import as_uuid
from ulpt.catalog.names import check_tenant
from ulpt.config import ulpt_home
from ulpt.jobs_api import JobHandle, JobsAPI
from ulpt.jobspec import JobSpec
from ulpt.keys_api import Keys
from ulpt.registry import AdapterRecord, AliasChange, GcReport, Lineage, Page, Registration, Registry
from ulpt.store import BlobStore, open_store

__all__ = ["Adapters", "Client"]


class Client:
    """Catalog + store (+ Ray, later) for one tenant. Safe to share between threads; close() when done."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        catalog_url: str | None = None,
        store_url: str | None = None,
        tenant: str = "default",
        *,
        store_options: Mapping[str, Any] | None = None,
        ray_address: str | None = None,
    ) -> None:
        self.home = Path(home).expanduser() if home is not None else ulpt_home()
        self.tenant = check_tenant(tenant)
        self._catalog_url = catalog_url or os.environ.get("ULPT_CATALOG_URL") or None
        self._store_url = store_url or os.environ.get("ULPT_STORE_URL") or None
        self._store_options = dict(store_options or {})
        self.ray_address = ray_address or os.environ.get("ULPT_RAY_ADDRESS") or None

    @property
    def catalog_url(self) -> str:
        return self._catalog_url or sqlite_url(self.home / "catalog.db")

    @property
    def store_url(self) -> str:
        return self._store_url or str((self.home / "blobs").resolve())

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog; the embedded default upgrades its own schema, others must already be current."""
        return open_catalog(self.catalog_url, auto_upgrade=self._catalog_url is None)

    @cached_property
    def store(self) -> BlobStore:
        return open_store(self.store_url, **self._store_options)

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.catalog, self.store)

    @cached_property
    def adapters(self) -> Adapters:
        """Register, find, get, alias, delete and export adapters of this client's tenant."""
        return Adapters(self.registry, self.tenant)

    @cached_property
    def jobs(self) -> JobsAPI:
        """Submit, resume, list, get and cancel this tenant's bulk training jobs."""
        return JobsAPI(self)

    @cached_property
    def keys(self) -> Keys:
        """Create, list and revoke this tenant's API keys for the HTTP API."""
        return Keys(self.catalog, self.tenant)

    def train(self, spec: JobSpec, **options: Any) -> JobHandle:
        """Validate and start a bulk training job on Ray (ray_address=, detach=, start=)."""
        return self.jobs.submit(spec, **options)

    def generate(self, model: str, text: str, **options: Any) -> str:
        """Text after `text` from adapter `model` (name, name:version, alias) or a base model; over HTTP
        when base_url= / ULPT_SERVE_URL is set, else in this process (see ulpt.serving_client)."""
        from ulpt.serving_client import generate

        return generate(self, model, text, **options)

    def gc(self, grace: timedelta = timedelta(hours=1), *, dry_run: bool = False) -> GcReport:
        """Remove blobs older than `grace` that no live adapter needs (orphans, deleted adapters)."""
        return self.registry.collect_garbage(grace, dry_run=dry_run)

    def create_api_key(self, label: str | None = None) -> NewApiKey:
        """`keys.create(label)`: a new key of this client's tenant (no other), its plaintext returned once."""
        return self.keys.create(label)

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.close()
            del self.__dict__["catalog"]
        for name in ("registry", "adapters", "jobs", "keys"):
            self.__dict__.pop(name, None)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(catalog={self.catalog_url!r}, store={self.store_url!r}, tenant={self.tenant!r})"


class Adapters:
    """`client.adapters`: the catalog seen by one tenant. Records are detached frozen dataclasses."""

    def __init__(self, registry: Registry, tenant: str) -> None:
        self._registry = registry
        self.tenant = tenant

    def register(
        self,
        adapter: Adapter | bytes,
        *,
        name: str,
        base_model: str | None = None,
        tags: Mapping[str, Any] | Sequence[str] | None = None,
        metrics: Mapping[str, Any] | None = None,
        version: int | None = None,
        parent: str | AdapterRecord | None = None,
        dataset_fingerprint: str | None = None,
        training_config: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        public: bool = False,
    ) -> AdapterRecord:
        """Store the adapter's blob, then record it; `version` defaults to one more than the name's last.

        `adapter` may also be the bytes of `Adapter.to_bytes()`; the record then comes from the blob's config.
        """
        registration = Registration(
            adapter=adapter,
            name=name,
            base_model=base_model,
            tags=tags,
            metrics=metrics,
            version=version,
            parent=parent,
            dataset_fingerprint=dataset_fingerprint,
            training_config=training_config,
            job_id=job_id,
            public=public,
        )
        return self._registry.register(registration, tenant=self.tenant)

    def register_many(self, registrations: Iterable[Registration]) -> list[AdapterRecord]:
        """Bulk path: blobs in parallel (S3), then one transaction for every row; all or nothing."""
        return self._registry.register_many(list(registrations), tenant=self.tenant)

    def get(self, ref: str) -> AdapterRecord:
        """`name` (latest live version), `name:version`, or an alias (`tenant/...` for public adapters)."""
        return self._registry.get(ref, tenant=self.tenant)

    def get_by_id(self, adapter_id: str) -> AdapterRecord:
        return self._registry.get_by_id(adapter_id, tenant=self.tenant)

    def load(self, ref: str) -> Adapter:
        """Shortcut for `get(ref).load()`: SHA-256 and projection fingerprint checked."""
        return self.get(ref).load()

    def find(
        self,
        *,
        tenant: str | None = None,
        name: str | None = None,
        base_model: str | None = None,
        method: str | None = None,
        rank: int | None = None,
        n_tokens: int | None = None,
        tags: Mapping[str, Any] | Sequence[str] | None = None,
        status: str | None = "ready",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        metrics: Mapping[str, Any] | Sequence[str] | None = None,
        job_id: str | None = None,
        include_public: bool = False,
        order_by: str = "-created_at",
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """One page of matching adapters, newest first by default.

        tags: all-of, {"task": "sst2"} or ["task=sst2", "reviewed"] (a bare tag only needs to be present).
        metrics: thresholds, {"eval_accuracy": (">=", 0.8)} or ["eval_accuracy>=0.8"].
        order_by: created_at, name, version or metrics.NAME, "-" for descending ("-metrics.eval_accuracy").
        Returns a Page: iterate it or use `.items`; pass `.next_cursor` as `cursor` for the next page.
        tenant: only adapters owned by this tenant; the client's tenant is who asks, so another tenant
        named here shows only its public adapters (never its private ones).
        """
        query = query_from(
            self.tenant,
            owner=tenant,
            name=name,
            base_model=base_model,
            method=method,
            rank=rank,
            n_tokens=n_tokens,
            tags=tags,
            status=status,
            created_after=created_after,
            created_before=created_before,
            metrics=metrics,
            job_id=None if job_id is None else as_uuid(job_id),
            include_public=include_public,
            order_by=order_by,
            limit=limit,
            cursor=cursor,
        )
        return self._registry.find(query)

    def iter(self, **filters: Any) -> Iterator[AdapterRecord]:
        """Every matching adapter, page after page (same filters as `find`)."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.find(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def show(self, ref: str) -> Lineage:
        """The record with its lineage: parent, children, aliases, job (deleted adapters included)."""
        return self._registry.lineage(ref, tenant=self.tenant)

    def alias(self, alias: str, ref: str) -> AliasChange:
        """Point `alias` at the adapter `ref` names (create or move); the old target is kept for rollback."""
        return self._registry.set_alias(alias, ref, tenant=self.tenant)

    def rollback(self, alias: str) -> AliasChange:
        """Move `alias` back to its previous target."""
        return self._registry.rollback_alias(alias, tenant=self.tenant)

    def unalias(self, alias: str) -> None:
        self._registry.remove_alias(alias, tenant=self.tenant)

    def aliases(self) -> list[tuple[str, AdapterRecord]]:
        return self._registry.list_aliases(tenant=self.tenant)

    def delete(self, ref: str, *, all_versions: bool = False, force: bool = False) -> list[AdapterRecord]:
        """Tombstone `name:version` (or every version with all_versions); `ulpt gc` later frees the blob."""
        return self._registry.delete(ref, tenant=self.tenant, all_versions=all_versions, force=force)

    def export(
        self, ref: str, folder: str | os.PathLike[str], *, peft: bool = False, base_config: Any = None
    ) -> Path:
        """Write the adapter to `folder`: ulpt format, or a PEFT PROMPT_TUNING adapter with `peft=True`."""
        return self._registry.export(
            ref, Path(folder), tenant=self.tenant, peft=peft, base_config=base_config
        )
