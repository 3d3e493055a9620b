"""The Python SDK: `ulpt.Client`, one object that reaches the catalog, the store (and later Ray).

    client = ulpt.Client()                                  # embedded: SQLite + folder under ULPT_HOME
    client = ulpt.Client(catalog_url="postgresql+psycopg://ulpt@db/ulpt", store_url="s3://bucket/adapters")
    record = client.adapters.register(adapter, name="user-42", base_model="smollm2", tags={"task": "sst2"})
    client.adapters.get("user-42:1").load()

Settings: explicit arguments, else ULPT_CATALOG_URL / ULPT_STORE_URL, else the embedded default under
`home` (ULPT_HOME, default ./.ulpt): `catalog.db` and `blobs/`. The embedded catalog creates and
upgrades its own schema; any other catalog must be upgraded with `ulpt db upgrade`.
Connections open lazily, on first use.

Remote mode: with `api_url=` and `api_key=` (or ULPT_API_URL and ULPT_API_KEY) `client.adapters`,
`client.jobs` and `client.train` go to the control plane over HTTP as the key's tenant, with no
database or store credentials (`ulpt.remote`); explicit catalog or store URLs keep direct mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

from ulpt.catalog import Catalog, NewApiKey
from ulpt.catalog.names import check_tenant
from ulpt.errors import SpecError, UlptError
from ulpt.jobspec import JobSpec
from ulpt.keys_api import Keys
from ulpt.registry import Adapters, GcReport, Locations, Registry
from ulpt.store import BlobStore
from ulpt_jobs.driver import JobTarget
from ulpt_jobs.handle import JobHandle, JobsAPI

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
        api_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.api = _remote_api(api_url, api_key, direct=bool(catalog_url or store_url))
        """The control plane this client talks to in remote mode, else None (direct mode)."""
        self.locations = Locations.resolve(home, catalog_url, store_url)
        self.home = self.locations.home
        self.tenant = check_tenant(tenant)
        self.store_options: Mapping[str, Any] = dict(store_options or {})
        """Keyword arguments of the store (S3 endpoint, credentials); job workers open theirs with them."""
        self.ray_address = ray_address or os.environ.get("ULPT_RAY_ADDRESS") or None

    @property
    def catalog_url(self) -> str:
        return self.locations.catalog_url

    @property
    def store_url(self) -> str:
        return self.locations.store_url

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog; the embedded default upgrades its own schema, others must already be current."""
        self._direct_only("the catalog")
        return self.locations.open_catalog()

    @cached_property
    def store(self) -> BlobStore:
        self._direct_only("the object store")
        return self.locations.open_store(**self.store_options)

    def _direct_only(self, what: str) -> None:
        """In remote mode a local catalog or store would silently be a different one: refuse instead."""
        if self.api is not None:
            raise UlptError(
                f"{what} is not reachable in remote mode (ULPT_API_URL is set): use client.adapters, "
                "client.jobs and client.train, or pass catalog_url= for direct mode"
            )

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.catalog, self.store)

    @cached_property
    def adapters(self) -> Adapters:
        """Register, find, get, alias, delete and export adapters of this client's tenant."""
        if self.api is not None:
            from ulpt.remote import RemoteAdapters

            return RemoteAdapters(self.api)  # type: ignore[return-value]
        return self.registry.for_tenant(self.tenant)

    @cached_property
    def jobs(self) -> JobsAPI:
        """Submit, resume, list, get and cancel this tenant's bulk training jobs."""
        if self.api is not None:
            from ulpt.remote import RemoteJobs

            return RemoteJobs(self.api)  # type: ignore[return-value]
        return JobsAPI(self)

    def job_target(self) -> JobTarget:
        """Where this client's jobs are recorded and run (for `client.jobs`; the catalog opens lazily)."""
        return JobTarget(
            catalog=self.catalog,
            catalog_url=self.catalog_url,
            store_url=self.store_url,
            home=Path(self.home).absolute(),
            store_options=dict(self.store_options),
            ray_address=self.ray_address,
        )

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
        if self.api is not None:
            return f"Client(api={self.api.url!r})"
        return f"Client(catalog={self.catalog_url!r}, store={self.store_url!r}, tenant={self.tenant!r})"


def _remote_api(url: str | None, key: str | None, *, direct: bool) -> Any:
    """The control plane of `url` / ULPT_API_URL with `key` / ULPT_API_KEY, or None for direct mode."""
    url = url or (None if direct else os.environ.get("ULPT_API_URL")) or None
    if url is None:
        return None
    key = key or os.environ.get("ULPT_API_KEY") or None
    if key is None:
        raise SpecError("remote mode needs an API key: set ULPT_API_KEY (from `ulpt keys create`)")
    from ulpt.remote import Api

    return Api(url, key)
