"""The vLLM engine against ulpt's own: the same tokens for mixed batches of every adapter method, seeded
sampling that does not depend on the other requests, stop strings, and aborts of rows nobody reads.

One vLLM engine (tiny Llama, fp32, CPU) serves the whole module: it takes about a minute to start.
The module is skipped where the vllm extra is not installed (`make test` installs it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

import ulpt
from ulpt.models import SamplingParams
from ulpt.models.tiny import build_tiny_model
from ulpt_serving.cache import CompactAdapter
from ulpt_serving.config import ServeConfig
from ulpt_serving.engine import BatchItem, Engine, RowFailure, TextStream

pytest.importorskip("vllm", reason="the vllm extra is not installed (make test installs it)")
pytestmark = pytest.mark.vllm

from ulpt_serving.metrics import ServingMetrics  # noqa: E402
from ulpt_serving.vllm_engine import VllmDecodeLoop, VllmEngine, engine_kind  # noqa: E402

T = TypeVar("T")
METHODS = ("ulpt", "pt", "dpt", "lopt1", "lopt2")
PROMPTS = [
    "the movie was good. A:",
    "service was slow and the room dirty",
    "Q: one plus two equals",
    "i really love this book",
    "the staff",
    "nine eight seven six five four three two one",
]


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


@pytest.fixture(scope="module")
def tiny_vllm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 64-wide heads: vLLM's CPU attention has kernels for head sizes of 32 and up, not the default 16.
    return build_tiny_model(tmp_path_factory.mktemp("vllm-model"), "llama", hidden_size=128, num_heads=2)


@pytest.fixture(scope="module")
def engines(
    tiny_vllm_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, VllmEngine, LoopThread]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "")  # restored after the module (the engine sets it)
        patch.setenv("VLLM_CACHE_ROOT", "")
        config = ServeConfig(
            model=str(tiny_vllm_folder),
            dtype="float32",
            max_batch_size=32,
            vllm_cpu_kv_cache_gib=1,  # plenty for a tiny model
            vllm_cache_root=str(tmp_path_factory.mktemp("vllm-cache")),
        )
        model = ulpt.load_base_model(tiny_vllm_folder, dtype="float32")
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


async def collect(loop: VllmDecodeLoop, row: BatchItem) -> TextStream:
    """A row read as the server reads it: tokens into a TextStream until it says done."""
    stream = TextStream(loop.engine.model, row.params, incremental=False)
    rows = loop.rows(row)
    try:
        async for token in rows:
            if isinstance(token, RowFailure):
                raise token.error
            stream.push(token)
            if stream.done:
                break
    finally:
        row.control.abandon()
        await rows.aclose()
    stream.finish()
    return stream


def run_all(engines: tuple[Engine, VllmEngine, LoopThread], items: list[BatchItem]) -> list[TextStream]:
    _, vllm_engine, loop = engines
    decode = VllmDecodeLoop(vllm_engine, ServingMetrics(export=False))

    async def together() -> list[TextStream]:
        return list(await asyncio.gather(*(collect(decode, it) for it in items)))

    return loop.run(together())


def test_greedy_tokens_equal_ulpts_engine_for_mixed_adapters_of_every_method(
    engines: tuple[Engine, VllmEngine, LoopThread],
) -> None:
    native, vllm_engine, _ = engines
    rows = [None, *adapters(native.model.hidden_size)]
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    mixed = [(text, rows[(i + k) % len(rows)]) for k in range(2) for i, text in enumerate(PROMPTS)]
    expected = native.generate([item(native, text, params, row) for text, row in mixed])
    got = run_all(engines, [item(native, text, params, row) for text, row in mixed])
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert [g.finish_reason for g in got] == [e.finish_reason for e in expected]
    assert [g.sent for g in got] == [e.text for e in expected]
    assert len({tuple(e.token_ids) for e in expected}) > len(PROMPTS)  # the adapters changed the answers


def test_seeded_sampling_is_the_same_alone_and_among_other_requests(
    engines: tuple[Engine, VllmEngine, LoopThread],
) -> None:
    native = engines[0]
    adapter = adapters(native.model.hidden_size)[0]
    seeded = SamplingParams(max_new_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    alone = run_all(engines, [item(native, PROMPTS[0], seeded, adapter)])[0]
    crowd = [item(native, PROMPTS[0], seeded, adapter)] + [
        item(native, text, SamplingParams(max_new_tokens=20, temperature=0.8, seed=7 + i, ignore_eos=True))
        for i, text in enumerate(PROMPTS)
    ]
    among = run_all(engines, crowd)[0]
    other_seed = run_all(
        engines, [item(native, PROMPTS[0], seeded.model_copy(update={"seed": 99}), adapter)]
    )[0]
    assert among.token_ids == alone.token_ids and len(alone.token_ids) == 16
    assert other_seed.token_ids != alone.token_ids


def test_stop_strings_cut_the_text_as_ulpts_engine_does(
    engines: tuple[Engine, VllmEngine, LoopThread],
) -> None:
    native = engines[0]
    adapter = adapters(native.model.hidden_size)[2]
    free = native.generate([item(native, PROMPTS[1], SamplingParams(max_new_tokens=24), adapter)])[0]
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    assert stop.strip(), free.text
    params = SamplingParams(max_new_tokens=24, stop=(stop,))
    expected = native.generate([item(native, PROMPTS[1], params, adapter)])[0]
    got = run_all(engines, [item(native, PROMPTS[1], params, adapter)])[0]
    assert got.sent == expected.text and got.finish_reason == expected.finish_reason == "stop"
    assert stop not in got.sent


def test_a_row_nobody_reads_is_aborted_in_vllm(engines: tuple[Engine, VllmEngine, LoopThread]) -> None:
    native, vllm_engine, loop = engines
    decode = VllmDecodeLoop(vllm_engine, ServingMetrics(export=False))
    row = item(native, PROMPTS[0], SamplingParams(max_new_tokens=400, ignore_eos=True))

    async def read_two_then_leave() -> int:
        rows = decode.rows(row)
        for _ in range(2):
            await anext(rows)
        row.control.abandon()
        await rows.aclose()  # what a disconnected client's stream does
        for _ in range(600):  # vLLM forgets the request once its engine core has aborted it
            if not vllm_engine.llm.output_processor.has_unfinished_requests():
                break
            await asyncio.sleep(0.05)
        return vllm_engine.llm.output_processor.get_num_unfinished_requests()

    assert loop.run(read_two_then_leave()) == 0
    assert row.control.released and 2 <= row.control.generated < 400
