"""What a request's `model` names, for the caller's tenant: the base model, or an adapter loaded into
the replica's cache; and what a tenant may name, listed by `/v1/models`.

A reference the tenant may not use answers exactly as one that does not exist (no existence leak). The
catalog is reached through a `Registry` only; how that registry is built and how the model listing
queries it are the two small functions at the bottom, kept together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ulpt.errors import AdapterFormatError, NotFoundError, StoreError
from ulpt.registry import AdapterRecord, Locations, Page, Registry
from ulpt_serving import answers, openapi, protocol, responses
from ulpt_serving.cache import CompactAdapter
from ulpt_serving.config import ServeConfig
from ulpt_serving.engine import Engine
from ulpt_serving.protocol import ApiError
from ulpt_serving.tenancy import Resolver

logger = logging.getLogger("ray.serve").getChild("ulpt")


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to."""

    label: str
    """Canonical name for logs and metrics: the base model's name or `tenant/name:version`."""
    adapter_key: str | None = None
    adapter: CompactAdapter | None = None
    n_tokens: int = 0


class AdapterResolution:
    """References -> loaded adapters of this replica's base model (cached for `resolve_cache_ttl_s`)."""

    def __init__(self, config: ServeConfig, registry: Registry, engine: Engine) -> None:
        self.config = config
        self.registry = registry
        self.engine = engine
        self.resolver = Resolver(registry, config.resolve_cache_ttl_s)

    def retry_after(self) -> dict[str, str]:
        return answers.retry_after(self.config.retry_after_s)

    async def target(self, tenant: str, ref: str) -> Target:
        """The adapter `ref` names for `tenant`, in the cache (single flight); 404 when unknown or not
        the tenant's to use, 400 for an adapter of another base model, 500/503 when it cannot load."""
        base = self.config.base_model_name
        if ref == base:
            return Target(base)
        record: AdapterRecord | None = await answers.from_catalog(
            self.resolver.resolve, tenant, ref, retry_after=self.retry_after()
        )
        if record is None:
            raise protocol.model_not_found()
        if record.base_model != base or record.hidden_size != self.engine.model.hidden_size:
            raise ApiError(
                400,
                f"adapter {ref!r} belongs to base model {record.base_model!r}; this server serves {base!r}",
                param="model",
                code="model_mismatch",
            )
        try:
            adapter = await self.engine.cache.get(record.id, record.load)
        except (AdapterFormatError, StoreError, NotFoundError) as exc:
            logger.error("adapter %s/%s could not be loaded: %s", record.tenant, record.ref, exc)
            raise answers.adapter_unavailable(ref, exc, self.retry_after()) from None
        return Target(f"{record.tenant}/{record.ref}", record.id, adapter, record.n_tokens)

    async def models(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        """One page of `/v1/models`: the base model and the tenant's aliases first, then adapters by name
        (the tenant's own as `name:version`, public ones of others as `tenant/name:version`)."""
        return await answers.from_catalog(self._models, tenant, limit, after, retry_after=self.retry_after())

    def _models(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        base = self.config.base_model_name
        entries: list[openapi.ModelEntry] = []
        if after is None:
            entries.append(responses.base_model_entry(base))
            for alias, record in self.registry.list_aliases(tenant=tenant):
                if record.base_model == base:
                    entries.append(responses.model_entry(alias, record, alias_of=record.ref))
        page = adapter_page(self.registry, tenant, base, limit, after)
        for record in page:
            ref = record.ref if record.tenant == tenant else f"{record.tenant}/{record.ref}"
            entries.append(responses.model_entry(ref, record))
        return responses.model_list(entries, page.next_cursor)


def default_registry(config: ServeConfig) -> Registry:
    """The catalog + store of `config.home` / `catalog_url` / `store_url`, resolved as `ulpt.Client` does."""
    return Locations.resolve(config.home, config.catalog_url, config.store_url).open_registry()


def adapter_page(registry: Registry, tenant: str, base: str, limit: int, after: str | None) -> Page:
    """Adapters of `base` that `tenant` may use (its own and public ones), by name, from cursor `after`."""
    return registry.for_tenant(tenant).find(
        base_model=base, include_public=True, order_by="name", limit=limit, cursor=after
    )
