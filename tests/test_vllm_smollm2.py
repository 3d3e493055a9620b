"""The vLLM engine on the real SmolLM2-135M: greedy tokens equal ulpt's engine for a mixed batch of
adapters of every method, in fp32 (slow tier: the model, and a vLLM engine start of about a minute)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import ulpt
from ulpt.models import SamplingParams
from ulpt.models.registry import resolve_model_path

pytest.importorskip("vllm", reason="the vllm extra is not installed (make test installs it)")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

from tests.vllm_fixtures import Engines, adapters, both_engines, item, run_all  # noqa: E402


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    model = ulpt.load_base_model("smollm2-135m", dtype="float32")
    folder = str(resolve_model_path("smollm2-135m"))
    with both_engines(model, folder, tmp_path_factory.mktemp("vllm-cache")) as pair:
        yield pair


def test_greedy_tokens_equal_ulpts_engine_on_smollm2(engines: Engines) -> None:
    native = engines[0]
    rows = [None, *adapters(native.model.hidden_size)]
    texts = [
        "Review: the room was spotless and the staff friendly.\nSentiment:",
        "Q: What is the capital of France?\nA:",
        "Translate to French: good morning\n",
        "The quick brown fox",
    ]
    mixed = [(text, rows[(i + k) % len(rows)]) for k in range(3) for i, text in enumerate(texts)]
    params = SamplingParams(max_new_tokens=32)
    expected = native.generate([item(native, text, params, row) for text, row in mixed])
    got = run_all(engines, [item(native, text, params, row) for text, row in mixed])
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert [g.sent for g in got] == [e.text for e in expected]
