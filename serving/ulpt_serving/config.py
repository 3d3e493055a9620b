"""`ServeConfig`: everything one serving application needs, as one frozen, validated model.

The same object travels CLI -> `build_application` -> every replica; `serve run` and a RayService pass
it as plain `args` (`ServeConfig.from_dict`). Float fields are finite (NaN or inf would mean "never").
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, model_validator

from ulpt.errors import SpecError
from ulpt.models.precision import DtypeName
from ulpt.validation import NonBlank, SpecModel
from ulpt_serving.limits import TenantLimits

FORMAT_VERSION: Final = 1
LOOPBACK_NAMES = ("localhost",)
MiB = 1 << 20
EngineName = Literal["auto", "vllm", "native"]
ENGINES: Final = ("auto", "vllm", "native")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the only hosts an auth-less server may bind."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rooted(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"must start with '/', got {prefix!r}")
    return prefix


class ServeConfig(SpecModel):
    """How `ulpt serve` runs: the model, where adapters come from, limits, batching and caches."""

    format_version: Literal[1] = FORMAT_VERSION
    """The config format this ulpt reads and writes."""
    model: NonBlank = "smollm2-135m"
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
    port: int = Field(default=8000, ge=1, le=65535)
    """Port the HTTP proxy binds."""
    app_name: str = "ulpt"
    """Ray Serve application name."""
    route_prefix: Annotated[str, AfterValidator(_rooted)] = "/"
    """URL prefix of the application (`/v1/...` lives under it)."""
    num_replicas: int = Field(default=1, ge=1, le=10_000)
    """Model replicas; each holds the base model once and its own adapter cache."""
    num_cpus: float = Field(default=1.0, ge=0, le=1e6)
    """CPUs Ray reserves per replica."""
    num_gpus: float = Field(default=0.0, ge=0, le=1e6)
    """GPUs Ray reserves per replica (the model moves to cuda when > 0)."""
    engine: EngineName = "auto"
    """What decodes: `vllm` (vLLM's continuous batching through prompt embeddings; decoder-only models,
    the `vllm` extra), `native` (ulpt's own batched decode loop: any model, no extra), or `auto`: vLLM
    where it is installed and the model is decoder-only, else native."""
    vllm_gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1.0)
    """Share of the GPU's memory vLLM takes for weights and its key/value cache (vLLM engine on a GPU);
    default 0.9 of `num_gpus`, so replicas that split a GPU each claim their part."""
    vllm_cpu_kv_cache_gib: float | None = Field(default=None, gt=0, le=1 << 20)
    """vLLM's key/value cache on a CPU, in GiB (default: `max_batch_size` rows of the longest context,
    at most 4 GiB)."""
    vllm_cache_root: str | None = None
    """Folder for vLLM's caches (default: $VLLM_CACHE_ROOT, else vLLM's own under the home folder)."""
    share_weights: bool = True
    """Replicas on a node map one copy of the base model from Ray's object store (read-only) instead of
    each loading its own from disk."""
    dtype: DtypeName = "auto"
    """The base model's dtype: auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16 or
    float16. Adapters' prompts are cast to it where they meet the token embeddings."""
    torch_threads: int | None = Field(default=None, ge=1, le=1 << 40)
    """torch intra-op threads per replica (default: what Ray's OMP_NUM_THREADS gives)."""
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Rows decoded together in one batch, across adapters."""
    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=60.0)
    """How long a batch waits to fill before it starts anyway."""
    max_ongoing_requests: int = Field(default=64, ge=1, le=1_000_000)
    """Requests a replica holds at once (decoding or waiting for the next batch)."""
    max_queued_requests: int = Field(default=256, ge=0, le=1_000_000)
    """Requests waiting for a replica; beyond it requests get 429 with Retry-After."""
    retry_after_s: float = Field(default=1.0, ge=0, le=86_400.0)
    """Retry-After sent with 429/503 answers of a full replica or an unreachable catalog."""
    limits: TenantLimits = Field(default_factory=TenantLimits)
    """Each tenant's share of a replica: requests and streams at once, body timeouts (`limits.py`)."""
    default_max_tokens: int = Field(default=16, ge=1)
    """max_tokens of a completion request that gives none (OpenAI's completions default)."""
    default_chat_max_tokens: int = Field(default=256, ge=1)
    """max_tokens of a chat request that gives none."""
    max_tokens_limit: int = Field(default=2048, ge=1, le=100_000)
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int = Field(default=4096, ge=1, le=10_000_000)
    """Longest input (prompt tokens + adapter tokens) accepted, further capped by the model's positions."""
    max_prompts_per_request: int = Field(default=32, ge=1, le=4096)
    """Largest list of prompts in one /v1/completions request."""
    compact_cache_bytes: int = Field(default=256 * MiB, ge=0, le=1 << 50)
    """Budget of verified compact adapters (Z, scale, shift) per replica: ~50,000 ULPT adapters at d=576."""
    compact_cache_count: int | None = Field(default=None, ge=1, le=1 << 40)
    """Optional cap on the number of compact adapters."""
    hot_cache_bytes: int = Field(default=512 * MiB, ge=0, le=1 << 50)
    """Budget of materialized prompts and their prefix key/values per replica."""
    hot_cache_count: int | None = Field(default=None, ge=1, le=1 << 40)
    """Optional cap on the number of materialized adapters."""
    prefix_cache: bool = True
    """Keep hot adapters' per-layer keys/values (decoder-only models) instead of re-running their prompts."""
    loader_threads: int = Field(default=8, ge=1, le=1024)
    """Threads fetching adapters from the store; concurrent requests for one adapter share one fetch."""
    auth_cache_ttl_s: float = Field(default=30.0, ge=0, le=3_600.0)
    """How long a refused key is remembered (one catalog query per bad key per TTL). Accepted keys are
    checked against the catalog on every request, so a revocation applies to the next request."""
    resolve_cache_ttl_s: float = Field(default=5.0, ge=0, le=3_600.0)
    """How long a resolved adapter reference is remembered; alias moves apply within it."""
    per_adapter_metrics: bool = True
    """Tag request metrics with the adapter (one time series per adapter served)."""
    log_requests: bool = True
    """One log line per request (ids, sizes, status, latency; never keys or prompt text)."""

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if not self.auth and not is_loopback(self.host):
            raise SpecError(
                "auth can only be turned off on a loopback host (127.0.0.1, ::1, localhost), "
                f"got host {self.host!r}"
            )
        for name in ("default_max_tokens", "default_chat_max_tokens"):
            if (value := getattr(self, name)) > self.max_tokens_limit:
                raise SpecError(
                    f"{name} must be at most max_tokens_limit ({self.max_tokens_limit}), got {value}"
                )
        if self.max_ongoing_requests < self.max_batch_size:
            raise SpecError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )
        return self

    @property
    def base_model_name(self) -> str:
        """What clients pass as `model` for the bare base model, and what adapters' base_model must be."""
        return self.served_model_name or self.model

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "") -> ServeConfig:
        """From `serve run ... key=value` args (strings, typed here by pydantic) or a config file."""
        if isinstance(data, dict):
            data = {key: _from_string(key, value) for key, value in data.items()}
        return super().from_dict(data, where=where)


def _from_string(key: str, value: Any) -> Any:
    """`serve run app:build_app port=8001` passes strings: read them as the field's type, leaving a
    string that does not parse for validation to refuse by name."""
    field = ServeConfig.model_fields.get(key)
    if not isinstance(value, str) or field is None or field.annotation is None:
        return value
    if value.lower() in ("none", "null") and not field.is_required() and field.default is None:
        return None
    try:
        return TypeAdapter(field.annotation).validate_strings(value)
    except ValidationError:
        return value
