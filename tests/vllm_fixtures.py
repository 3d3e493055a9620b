"""Shared by the vLLM engine's tests: an event loop thread (as a replica has), both engines on one
model, adapters of every method, and rows read as the server reads them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

import ulpt
from ulpt.models import SamplingParams
from ulpt_serving.cache import CompactAdapter
from ulpt_serving.config import ServeConfig
from ulpt_serving.engine import BatchItem, Engine, TextStream
from ulpt_serving.generation import collect_row
from ulpt_serving.metrics import ServingMetrics
from ulpt_serving.vllm_engine import VllmDecodeLoop, VllmEngine, engine_kind

T = TypeVar("T")
METHODS = ("ulpt", "pt", "dpt", "lopt1", "lopt2")
Engines = tuple[Engine, VllmEngine, "LoopThread"]


class LoopThread:
    """An event loop of its own, as a replica has: vLLM's output handler lives on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@contextmanager
def both_engines(model: ulpt.BaseModel, folder: str, cache_root: Path) -> Iterator[Engines]:
    """ulpt's engine and a vLLM engine (fp32, CPU) on `model`, the latter on its own event loop."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # the config's size, not the environment's
        patch.setenv("VLLM_CACHE_ROOT", "")  # restored afterwards (the engine sets it)
        config = ServeConfig(
            model=folder,
            dtype="float32",
            max_batch_size=32,
            vllm_cpu_kv_cache_gib=1,
            vllm_cache_root=str(cache_root),
        )
        assert engine_kind(config, model) == "vllm"
        native = Engine.create(model, config.model_copy(update={"engine": "native"}))
        loop = LoopThread()

        async def start() -> VllmEngine:
            return VllmEngine.create(model, config)

        vllm_engine = loop.run(start())
        try:
            yield native, vllm_engine, loop
        finally:

            async def stop() -> None:
                vllm_engine.shutdown()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            loop.run(stop())
            loop.stop()


def adapters(hidden: int) -> list[tuple[str, CompactAdapter]]:
    """One adapter of each method (and prompt lengths 2 to 10), moved off their init so rows differ."""
    out = []
    for i, method in enumerate(METHODS):
        spec = ulpt.AdapterSpec(method=method, n_tokens=2 + 2 * i, rank=4, seed=500 + i)
        adapter = ulpt.Adapter.create(spec, hidden, base_model="tiny")
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        out.append((f"{method}-{i}", CompactAdapter.from_adapter(adapter)))
    return out


def item(engine: Engine, text: str, params: SamplingParams, adapter: Any = None) -> BatchItem:
    key, compact = adapter if adapter is not None else (None, None)
    return BatchItem(text, params, key, compact, token_ids=tuple(engine.model.encode(text)))


def run_all(engines: Engines, items: list[BatchItem]) -> list[TextStream]:
    _, vllm_engine, loop = engines
    decode = VllmDecodeLoop(vllm_engine, ServingMetrics(export=False))

    async def together() -> list[TextStream]:
        return list(await asyncio.gather(*(collect_row(decode, it) for it in items)))

    return loop.run(together())
