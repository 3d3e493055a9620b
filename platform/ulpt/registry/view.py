"""A tenant-bound view of the registry: what the SDK, the CLI and the HTTP API ask on behalf of a tenant."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulpt.adapters import Adapter
from ulpt.catalog.find import query_from
from ulpt.catalog.jobs import as_uuid
from ulpt.registry.records import AdapterRecord, AliasChange, Lineage, Page
from ulpt.registry.registration import Registration

if TYPE_CHECKING:
    from ulpt.registry.api import Registry


class Adapters:
    """The adapters one tenant sees (`client.adapters`, `registry.for_tenant(t)`); records are detached.

    Every call passes this view's tenant to the registry, so code holding a view cannot reach another
    tenant's private adapters.
    """

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
