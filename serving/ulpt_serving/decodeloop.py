"""The replica's one decode loop: requests join it as rows, whatever adapter each one uses.

Batches are NOT split by adapter (the adapter travels in the row, not in `serve.multiplexed`'s model
id), so one forward pass per step serves rows of many adapters. The model runs on one thread of its
own, so the event loop keeps answering (and admitting) requests while a step computes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from ulpt_serving.engine import BatchItem, Engine, RowFailure
from ulpt_serving.metrics import ServingMetrics

_mixed_batch: Any = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
"""Callers pass ONE item and get an async iterator of its tokens; Serve gathers items into batches
(sizes set by `DecodeLoop.configure`). Typed Any: serve.batch's stubs do not cover async generators."""


def _timed_next(
    steps: Iterator[dict[int, int | RowFailure]],
) -> tuple[dict[int, int | RowFailure] | None, float]:
    """The next decoding step and the seconds it took in the model (queueing for the thread excluded)."""
    started = time.perf_counter()
    step = next(steps, None)
    return step, time.perf_counter() - started


class DecodeLoop:
    def __init__(self, engine: Engine, metrics: ServingMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="ulpt-decode")

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Change how batches form, without a redeploy."""
        self.rows.set_max_batch_size(max_batch_size)
        self.rows.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @_mixed_batch
    async def rows(self, items: list[BatchItem]) -> AsyncIterator[list[Any]]:
        """ONE decode loop for rows of any adapters; yields, per step, each row's token (or its end)."""
        self.metrics.batch([it.adapter_key for it in items])
        loop = asyncio.get_running_loop()
        steps = self.engine.steps(items)
        compute_s, n_steps = 0.0, 0
        for item in items:
            item.control.joined = True
        try:
            while True:
                step, seconds = await loop.run_in_executor(self.decoder, _timed_next, steps)
                compute_s += seconds
                if step is None:
                    break
                n_steps += 1
                for i, item in enumerate(items):
                    if i not in step:
                        item.control.release()  # ended (or was abandoned) in the step before
                    elif not isinstance(step[i], RowFailure):
                        item.control.generated += 1
                yield [step.get(i, StopIteration) for i in range(len(items))]
        finally:
            for item in items:
                item.control.release()
            self.metrics.batch_done(compute_s, n_steps)
            self.metrics.cache(self.engine.cache.stats())
