"""The vLLM engine against ulpt's own: the same tokens for mixed batches of every adapter method, seeded
sampling that does not depend on the other requests, stop strings, and aborts of rows nobody reads.

One vLLM engine (tiny Llama, fp32, CPU) serves the whole module: it takes about a minute to start.
The module is skipped where the vllm extra is not installed (`make test` installs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import ulpt
from ulpt.models import SamplingParams
from ulpt.models.tiny import build_tiny_model

pytest.importorskip("vllm", reason="the vllm extra is not installed (make test installs it)")
pytestmark = pytest.mark.vllm

from tests.vllm_fixtures import Engines, adapters, both_engines, item, run_all  # noqa: E402
from ulpt_serving.metrics import ServingMetrics  # noqa: E402
from ulpt_serving.vllm_engine import VllmDecodeLoop  # noqa: E402

PROMPTS = [
    "the movie was good. A:",
    "service was slow and the room dirty",
    "Q: one plus two equals",
    "i really love this book",
    "the staff",
    "nine eight seven six five four three two one",
]


@pytest.fixture(scope="module")
def tiny_vllm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 64-wide heads: vLLM's CPU attention has kernels for head sizes of 32 and up, not the default 16.
    return build_tiny_model(tmp_path_factory.mktemp("vllm-model"), "llama", hidden_size=128, num_heads=2)


@pytest.fixture(scope="module")
def engines(tiny_vllm_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    model = ulpt.load_base_model(tiny_vllm_folder, dtype="float32")
    with both_engines(model, str(tiny_vllm_folder), tmp_path_factory.mktemp("vllm-cache")) as pair:
        yield pair


def test_greedy_tokens_equal_ulpts_engine_for_mixed_adapters_of_every_method(
    engines: Engines,
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
    engines: Engines,
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
    engines: Engines,
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


def test_a_row_nobody_reads_is_aborted_in_vllm(engines: Engines) -> None:
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
