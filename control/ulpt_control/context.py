"""What every route reaches: the registry (catalog + store), the key check, and jobs per tenant."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ulpt.registry import Locations, Registry
from ulpt.registry.keys import Authenticator
from ulpt_control.config import ControlConfig
from ulpt_jobs.driver import JobTarget
from ulpt_jobs.handle import JobsAPI
from ulpt_serving.limits import TenantSlots


@dataclass(frozen=True)
class TenantJobs:
    """The owner `JobsAPI` needs: a tenant (from the caller's key) and where jobs live and run."""

    tenant: str
    target: JobTarget

    def job_target(self) -> JobTarget:
        return self.target


class ControlContext:
    """One per replica (or per test app); safe to share between request threads."""

    def __init__(self, config: ControlConfig, registry: Registry, locations: Locations) -> None:
        self.config = config
        self.registry = registry
        self.locations = locations
        self.auth = Authenticator(registry, config.auth_cache_ttl_s)
        self.slots = TenantSlots(config.limits)

    @classmethod
    def open(cls, config: ControlConfig) -> ControlContext:
        locations = Locations.resolve(config.home, config.catalog_url, config.store_url)
        return cls(config, locations.open_registry(), locations)

    @cached_property
    def job_target(self) -> JobTarget:
        return JobTarget(
            catalog=self.registry.catalog,
            catalog_url=self.locations.catalog_url,
            store_url=self.locations.store_url,
            home=Path(self.locations.home).absolute(),
            ray_address=self.config.ray_address,
            max_pending_fits=self.config.limits.max_pending_fits,
        )

    def jobs(self, tenant: str) -> JobsAPI:
        """The jobs API acting as `tenant` (never a tenant the caller names)."""
        return JobsAPI(TenantJobs(tenant, self.job_target))
