"""`ServeConfig`: everything one serving application needs, as one frozen, validated dataclass.

The same object travels CLI -> `build_application` -> every replica; `serve run` and a RayService pass
it as plain `args` (`ServeConfig.from_dict`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, fields
from typing import Any

from ulpt.errors import SpecError
from ulpt.models.precision import check_dtype_name
from ulpt.validation import check_int, check_number

FORMAT_VERSION = 1
LOOPBACK_NAMES = ("localhost",)
MiB = 1 << 20

NUMBER_LIMITS = {
    "num_cpus": 1e6,
    "num_gpus": 1e6,
    "batch_wait_timeout_s": 60.0,
    "retry_after_s": 86_400.0,
    "auth_cache_ttl_s": 3_600.0,
    "resolve_cache_ttl_s": 3_600.0,
}
"""Upper bounds of the float fields (all are at least 0 and finite: NaN or inf would mean "never")."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the only hosts an auth-less server may bind."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """How `ulpt serve` runs: the model, where adapters come from, limits, batching and caches."""

    model: str = "smollm2-135m"
    """Base model: a known name (smollm2-135m) or a `from_pretrained` folder."""
    served_model_name: str | None = None
    """Base model name in requests and /v1/models; adapters' base_model must equal it. Default: `model`."""
    home: str | None = None
    """ULPT_HOME of the embedded catalog and store (default: $ULPT_HOME or ./.ulpt)."""
    catalog_url: str | None = None
    """Catalog URL (default: $ULPT_CATALOG_URL, else the embedded SQLite under `home`)."""
    store_url: str | None = None
    """Blob store URL (default: $ULPT_STORE_URL, else the embedded folder under `home`)."""
    auth: bool = True
    """Require `Authorization: Bearer KEY`; False serves `tenant` without keys, to loopback clients only."""
    tenant: str = "default"
    """The tenant whose adapters an auth-less server serves."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds (used by `ulpt serve`; a RayService sets its own)."""
    port: int = 8000
    """Port the HTTP proxy binds."""
    app_name: str = "ulpt"
    """Ray Serve application name."""
    route_prefix: str = "/"
    """URL prefix of the application (`/v1/...` lives under it)."""
    num_replicas: int = 1
    """Model replicas; each holds the base model once and its own adapter cache."""
    num_cpus: float = 1.0
    """CPUs Ray reserves per replica."""
    num_gpus: float = 0.0
    """GPUs Ray reserves per replica (the model moves to cuda when > 0)."""
    dtype: str = "auto"
    """The base model's dtype: auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16 or
    float16. Adapters' prompts are cast to it where they meet the token embeddings."""
    torch_threads: int | None = None
    """torch intra-op threads per replica (default: what Ray's OMP_NUM_THREADS gives)."""
    max_batch_size: int = 32
    """Rows decoded together in one batch, across adapters."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill before it starts anyway."""
    max_ongoing_requests: int = 64
    """Requests a replica holds at once (decoding or waiting for the next batch)."""
    max_queued_requests: int = 256
    """Requests waiting for a replica; beyond it requests get 429 with Retry-After."""
    retry_after_s: float = 1.0
    """Retry-After sent with 429/503 answers."""
    default_max_tokens: int = 16
    """max_tokens of a completion request that gives none (OpenAI's completions default)."""
    default_chat_max_tokens: int = 256
    """max_tokens of a chat request that gives none."""
    max_tokens_limit: int = 2048
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int = 4096
    """Longest input (prompt tokens + adapter tokens) accepted, further capped by the model's positions."""
    max_prompts_per_request: int = 32
    """Largest list of prompts in one /v1/completions request."""
    compact_cache_bytes: int = 256 * MiB
    """Budget of verified compact adapters (Z, scale, shift) per replica: ~50,000 ULPT adapters at d=576."""
    compact_cache_count: int | None = None
    """Optional cap on the number of compact adapters."""
    hot_cache_bytes: int = 512 * MiB
    """Budget of materialized prompts and their prefix key/values per replica."""
    hot_cache_count: int | None = None
    """Optional cap on the number of materialized adapters."""
    prefix_cache: bool = True
    """Keep hot adapters' per-layer keys/values (decoder-only models) instead of re-running their prompts."""
    loader_threads: int = 8
    """Threads fetching adapters from the store; concurrent requests for one adapter share one fetch."""
    auth_cache_ttl_s: float = 30.0
    """How long a refused key is remembered (one catalog query per bad key per TTL). Accepted keys are
    checked against the catalog on every request, so a revocation applies to the next request."""
    resolve_cache_ttl_s: float = 5.0
    """How long a resolved adapter reference is remembered; alias moves apply within it."""
    per_adapter_metrics: bool = True
    """Tag request metrics with the adapter (one time series per adapter served)."""
    log_requests: bool = True
    """One log line per request (ids, sizes, status, latency; never keys or prompt text)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise SpecError("model must name a base model or a model folder")
        if not self.auth and not is_loopback(self.host):
            raise SpecError(
                "auth can only be turned off on a loopback host (127.0.0.1, ::1, localhost), "
                f"got host {self.host!r}"
            )
        if not self.route_prefix.startswith("/"):
            raise SpecError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        check_int("port", self.port, 1, 65535)
        check_int("num_replicas", self.num_replicas, 1, 10_000)
        check_int("max_batch_size", self.max_batch_size, 1, 4096)
        check_int("max_ongoing_requests", self.max_ongoing_requests, 1, 1_000_000)
        check_int("max_queued_requests", self.max_queued_requests, 0, 1_000_000)
        check_int("default_max_tokens", self.default_max_tokens, 1, self.max_tokens_limit)
        check_int("default_chat_max_tokens", self.default_chat_max_tokens, 1, self.max_tokens_limit)
        if self.max_ongoing_requests < self.max_batch_size:
            raise SpecError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )
        check_int("max_tokens_limit", self.max_tokens_limit, 1, 100_000)
        check_int("max_prompt_tokens", self.max_prompt_tokens, 1, 10_000_000)
        check_int("max_prompts_per_request", self.max_prompts_per_request, 1, 4096)
        check_int("compact_cache_bytes", self.compact_cache_bytes, 0, 1 << 50)
        check_int("hot_cache_bytes", self.hot_cache_bytes, 0, 1 << 50)
        check_int("loader_threads", self.loader_threads, 1, 1024)
        for name in ("compact_cache_count", "hot_cache_count", "torch_threads"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1, 1 << 40)
        for name, high in NUMBER_LIMITS.items():
            check_number(name, getattr(self, name), ge=0, le=high)
        check_dtype_name("dtype", self.dtype)

    @property
    def base_model_name(self) -> str:
        """What clients pass as `model` for the bare base model, and what adapters' base_model must be."""
        return self.served_model_name or self.model

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        """From `serve run ... key=value` args or a config file; unknown keys are refused by name."""
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise SpecError(
                f"unsupported ServeConfig format_version {version!r} (this ulpt reads {FORMAT_VERSION})"
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(
                f"unknown serve option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**{k: _coerce(known[k].type, v) for k, v in data.items()})


def _coerce(annotation: Any, value: Any) -> Any:
    """`serve run app:build_app port=8001` passes strings: turn them into the field's type."""
    if not isinstance(value, str):
        return value
    kind = str(annotation)
    if value.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            return value
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        return value  # validation then names the field
    return value
