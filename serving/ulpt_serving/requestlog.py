"""One log line and one set of metrics per request, whatever way the request ends.

A line names ids, sizes, status and latency, never keys or prompt text. `completion_tokens` is what the
replica decoded for the request, which for a client that disconnected mid-stream is more than it
received: the line shows the work the request caused (see `RowControl`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ulpt_serving.metrics import ServingMetrics

logger = logging.getLogger("ray.serve").getChild("ulpt")


@dataclass
class RequestInfo:
    """What the log line says about a request, filled in as the handler learns it."""

    endpoint: str
    stream: bool = False
    tenant: str = "-"
    label: str = "-"
    prompt_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


class RequestLog:
    def __init__(self, metrics: ServingMetrics, enabled: bool) -> None:
        self.metrics = metrics
        self.enabled = enabled

    def record(self, info: RequestInfo, status: int, completion_tokens: int = 0) -> None:
        latency = time.perf_counter() - info.started
        if info.endpoint != "models":
            self.metrics.request(info.label, info.endpoint, status, latency, completion_tokens)
        if self.enabled:
            logger.info(
                "request endpoint=%s tenant=%s model=%s status=%d stream=%s prompt_tokens=%d "
                "completion_tokens=%d latency_ms=%.1f",
                info.endpoint,
                info.tenant,
                info.label,
                status,
                info.stream,
                info.prompt_tokens,
                completion_tokens,
                latency * 1000,
            )
