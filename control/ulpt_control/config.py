"""What one control-plane deployment allows: where its catalog and store are, and its limits."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ulpt.errors import SpecError
from ulpt_serving.limits import TenantLimits


@dataclass(frozen=True)
class ControlConfig:
    """Settings of the control plane; `from_dict` reads a Serve config's `args` (strings allowed)."""

    home: str | None = None
    """ULPT_HOME of the service (caches, the embedded catalog); None: the environment's."""
    catalog_url: str | None = None
    store_url: str | None = None
    ray_address: str | None = None
    """Where submitted jobs run; None: the Ray this process is on (a Serve replica's)."""
    max_upload_bytes: int = 64 << 20
    """Largest uploaded data file; refused from the declared length, or as soon as the stream passes it."""
    max_spec_bytes: int = 1 << 20
    """Largest job spec body."""
    data_prefixes: tuple[str, ...] = ()
    """`s3://` prefixes a job's data may name (read with the service's credentials). Empty: uploads only."""
    base_models: tuple[str, ...] = ()
    """Base models jobs may name besides the known names (`smollm2-135m`): folders or names on the service."""
    max_workers: int = 8
    """Most Ray workers one submitted job may ask for."""
    max_cpus_per_worker: int = 8
    """Most CPUs one worker may ask for: the largest node type of the cluster (the autoscaler's
    included). A job asking more could never be placed and would wait forever, so it is refused."""
    gpu_workers: bool = False
    """Whether a node type of the cluster (the autoscaler's included) has GPUs; without, `use_gpu`
    jobs are refused at submission instead of waiting forever for a GPU."""
    auth_cache_ttl_s: float = 30.0
    """How long a refused key is remembered (accepted keys are checked on every request)."""
    events_poll_s: float = 1.0
    """How often the event stream reads a job's state."""
    limits: TenantLimits = dataclasses.field(default_factory=TenantLimits)
    """Each tenant's share of a replica, uploads and fits (`ulpt_serving.limits.TenantLimits`)."""
    max_ongoing_requests: int = 64
    """Requests a replica serves at once, all tenants together (Ray Serve's default, 5, let five slow
    clients hold every slot); each tenant gets at most `limits.max_requests` of them."""
    num_cpus: float = 0.0
    """CPUs a replica reserves: it reads the catalog and starts job drivers (jobs reserve their own)."""
    num_replicas: int = 1
    app_name: str = "ulpt-control"
    route_prefix: str = "/control"

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_spec_bytes < 1:
            raise SpecError("max_upload_bytes and max_spec_bytes must be positive")
        if self.max_workers < 1 or self.max_cpus_per_worker < 1 or self.max_ongoing_requests < 1:
            raise SpecError("max_workers, max_cpus_per_worker and max_ongoing_requests must be positive")
        for prefix in self.data_prefixes:
            if not prefix.startswith("s3://") or prefix.rstrip("/") == "s3:":
                raise SpecError(f"data_prefixes: {prefix!r} is not an s3://bucket/prefix")

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> ControlConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise SpecError(f"unknown control-plane setting {unknown[0]!r}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, value in args.items():
            kind = str(known[name].type)
            if kind.startswith("tuple") and isinstance(value, str):
                value = tuple(v for v in value.split(",") if v)
            elif kind.startswith("tuple"):
                value = tuple(value)
            elif kind == "int":
                value = int(value)
            elif kind == "float":
                value = float(value)
            elif kind == "TenantLimits" and not isinstance(value, TenantLimits):
                value = TenantLimits.from_dict(
                    json.loads(value) if isinstance(value, str) else value, where=name
                )
            elif kind == "bool" and not isinstance(value, bool):
                if str(value).lower() not in ("true", "false"):
                    raise SpecError(f"{name}: true or false, got {value!r}")
                value = str(value).lower() == "true"
            values[name] = value
        return cls(**values)
