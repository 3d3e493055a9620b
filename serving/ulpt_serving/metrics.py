"""Per-adapter request counts and latency, batch composition and cache state.

Exported through Ray Serve's metrics (Prometheus, tagged with deployment/replica/application by Serve)
and mirrored in a small in-process summary that `stats()` on the deployment handle returns, which is
how tests and benchmarks see, for example, that a batch really mixed 16 adapters.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ulpt_serving.cache import CacheStats

LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
RECENT_BATCHES = 256


def _tags(*keys: str) -> Any:
    """Tag keys as Ray wants them (its annotation says a 1-tuple; any tuple of names works)."""
    return tuple(keys)


class ServingMetrics:
    """One per replica. `export=False` keeps only the in-process summary (no Ray needed)."""

    def __init__(self, *, per_adapter: bool = True, export: bool = True) -> None:
        self.per_adapter = per_adapter
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.generated_tokens = 0
        self.decode_steps = 0
        self.recent_batches: deque[dict[str, int]] = deque(maxlen=RECENT_BATCHES)
        self.batches = 0
        self.compute_s = 0.0
        self._ray: dict[str, Any] = {}
        if export:
            from ray.serve import metrics

            self._ray = {
                "requests": metrics.Counter(
                    "ulpt_requests",
                    description="Requests answered, per adapter, endpoint and HTTP status.",
                    tag_keys=_tags("model", "endpoint", "status"),
                ),
                "latency": metrics.Histogram(
                    "ulpt_request_latency_s",
                    description="Seconds from request arrival to the last byte, per adapter.",
                    boundaries=LATENCY_BUCKETS_S,
                    tag_keys=_tags("model", "endpoint"),
                ),
                "tokens": metrics.Counter(
                    "ulpt_generated_tokens",
                    description="Tokens generated, per adapter.",
                    tag_keys=_tags(
                        "model",
                    ),
                ),
                "batch_rows": metrics.Histogram(
                    "ulpt_batch_rows",
                    description="Rows decoded together in one batch.",
                    boundaries=BATCH_BUCKETS,
                ),
                "batch_adapters": metrics.Histogram(
                    "ulpt_batch_distinct_adapters",
                    description="Distinct adapters (base model counted as one) in one batch.",
                    boundaries=BATCH_BUCKETS,
                ),
                "cache_adapters": metrics.Gauge(
                    "ulpt_adapter_cache_entries",
                    description="Adapters cached, per tier.",
                    tag_keys=_tags(
                        "tier",
                    ),
                ),
                "cache_bytes": metrics.Gauge(
                    "ulpt_adapter_cache_bytes",
                    description="Bytes of cached adapters, per tier.",
                    tag_keys=_tags(
                        "tier",
                    ),
                ),
            }

    def label(self, model: str) -> str:
        """The `model` tag: the adapter's canonical reference, or one shared value when per-adapter is off."""
        return model if self.per_adapter else "all"

    def request(
        self, model: str, endpoint: str, status: int, latency_s: float, completion_tokens: int
    ) -> None:
        label = self.label(model)
        self.requests[(label, endpoint, status)] += 1
        self.latency_sum[label] += latency_s
        self.generated_tokens += completion_tokens
        if self._ray:
            self._ray["requests"].inc(tags={"model": label, "endpoint": endpoint, "status": str(status)})
            self._ray["latency"].observe(latency_s, tags={"model": label, "endpoint": endpoint})
            if completion_tokens:
                self._ray["tokens"].inc(completion_tokens, tags={"model": label})

    def batch(self, adapter_keys: Sequence[str | None]) -> None:
        distinct = len(set(adapter_keys))
        self.batches += 1
        self.recent_batches.append({"rows": len(adapter_keys), "distinct_adapters": distinct})
        if self._ray:
            self._ray["batch_rows"].observe(len(adapter_keys))
            self._ray["batch_adapters"].observe(distinct)

    def batch_done(self, compute_s: float, steps: int) -> None:
        """Seconds the batch spent in the model (prefill, decode steps, building prefixes) and its steps:
        the replica's busy time, which rows nobody reads any more must not extend."""
        self.compute_s += compute_s
        self.decode_steps += steps

    def cache(self, stats: CacheStats) -> None:
        if self._ray:
            for tier, count, nbytes in (
                ("compact", stats.compact_count, stats.compact_bytes),
                ("hot", stats.hot_count, stats.hot_bytes),
            ):
                self._ray["cache_adapters"].set(count, tags={"tier": tier})
                self._ray["cache_bytes"].set(nbytes, tags={"tier": tier})

    def summary(self, cache: CacheStats | None = None) -> dict[str, Any]:
        per_model: dict[str, dict[str, Any]] = {}
        for (label, _endpoint, status), count in self.requests.items():
            entry = per_model.setdefault(label, {"requests": 0, "by_status": {}, "latency_s_sum": 0.0})
            entry["requests"] += count
            entry["by_status"][str(status)] = entry["by_status"].get(str(status), 0) + count
        for label, total in self.latency_sum.items():
            per_model.setdefault(label, {"requests": 0, "by_status": {}, "latency_s_sum": 0.0})
            per_model[label]["latency_s_sum"] = total
        return {
            "models": per_model,
            "generated_tokens": self.generated_tokens,
            "batches": self.batches,
            "compute_s": self.compute_s,
            "decode_steps": self.decode_steps,
            "recent_batches": list(self.recent_batches),
            "cache": asdict(cache) if cache is not None else None,
        }
