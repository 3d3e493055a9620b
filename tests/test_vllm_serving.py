"""The HTTP API with the vLLM engine inside a Ray Serve replica: the same answers, streams and usage as
with ulpt's own engine (a second app on the same model and catalog), and a client that disconnects
mid-stream stops its request in vLLM.

One vLLM replica serves the whole module (about a minute to start, tiny Llama, fp32, CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch

import ulpt
from tests.serve_fixtures import ServeStack, deploy_app
from ulpt.models.tiny import build_tiny_model
from ulpt.sdk import Client

pytest.importorskip("vllm", reason="the vllm extra is not installed (make test installs it)")
pytestmark = pytest.mark.vllm

METHODS = ("ulpt", "pt", "dpt", "lopt1", "lopt2")
BASE = "tiny-vllm"


@dataclass
class Apps:
    vllm: str
    native: str


@pytest.fixture(scope="module")
def apps(serve_stack: ServeStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    from ray import serve

    from ulpt_serving.config import ServeConfig

    folder = build_tiny_model(
        tmp_path_factory.mktemp("vllm-serve-model"), "llama", hidden_size=128, num_heads=2
    )
    home = tmp_path_factory.mktemp("vllm-serve-home")
    with Client(home=home, tenant="default") as client:
        for i, method in enumerate(METHODS):
            spec = ulpt.AdapterSpec(method=method, n_tokens=3 + i, rank=4, seed=700 + i)
            adapter = ulpt.Adapter.create(spec, 128, base_model=BASE)
            with torch.no_grad():
                for p in adapter.parameters():
                    p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
            client.adapters.register(adapter, name=method)
    common: dict[str, Any] = dict(
        model=str(folder), served_model_name=BASE, home=str(home), auth=False, num_cpus=0, torch_threads=1,
        dtype="float32", vllm_cpu_kv_cache_gib=1, vllm_cache_root=str(tmp_path_factory.mktemp("vllm-root")),
    )  # fmt: skip
    urls = Apps(
        vllm=serve_stack.url + deploy_app("vllm", ServeConfig(engine="vllm", **common)),
        native=serve_stack.url + deploy_app("vllm-ref", ServeConfig(engine="native", **common)),
    )
    try:
        yield urls
    finally:
        serve.delete("vllm")
        serve.delete("vllm-ref")


def _without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def _events(text: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_answers_equal_ulpts_engine_for_every_adapter_method(apps: Apps) -> None:
    prompts = ["the movie was good. A:", "the staff was slow", "Q: two plus two"]
    for model in (*METHODS, BASE):
        body = {"model": model, "prompt": prompts, "max_tokens": 12, "temperature": 0}
        got = httpx.post(f"{apps.vllm}/v1/completions", json=body, timeout=300)
        want = httpx.post(f"{apps.native}/v1/completions", json=body, timeout=300)
        assert got.status_code == want.status_code == 200, got.text
        assert _without_ids(got.json()) == _without_ids(want.json())
        chat = {"model": model, "messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 8}
        got = httpx.post(f"{apps.vllm}/v1/chat/completions", json={**chat, "temperature": 0}, timeout=300)
        want = httpx.post(f"{apps.native}/v1/chat/completions", json={**chat, "temperature": 0}, timeout=300)
        assert _without_ids(got.json()) == _without_ids(want.json())


def test_a_stream_adds_up_to_the_answer_with_its_usage(apps: Apps) -> None:
    body = {"model": "lopt2", "prompt": "i really love this", "max_tokens": 16, "temperature": 0}
    whole = httpx.post(f"{apps.vllm}/v1/completions", json=body, timeout=300).json()
    streamed = httpx.post(
        f"{apps.vllm}/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=300,
    )
    events = _events(streamed.text)
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == whole["choices"][0]["text"]
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == whole["choices"][0][
        "finish_reason"
    ]
    assert events[-1]["usage"] == whole["usage"]


def test_a_client_that_disconnects_stops_its_request_in_vllm(apps: Apps, serve_stack: ServeStack) -> None:
    handle = serve_stack.handle("vllm")
    before = handle.stats.remote().result()
    aborted_before = before["models"].get("default/ulpt:1", {}).get("by_status", {}).get("499", 0)
    body = {"model": "ulpt", "prompt": "the", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{apps.vllm}/v1/completions", json=body, timeout=300) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                break  # one chunk read, then the connection closes
    for _ in range(1200):  # the replica logs the request (499) once vLLM has let go of it
        stats = handle.stats.remote().result()
        if stats["models"]["default/ulpt:1"]["by_status"].get("499", 0) > aborted_before:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the abandoned stream was never logged: {stats}")
    assert stats["generated_tokens"] < before["generated_tokens"] + 480  # it stopped long before the end


def test_the_replica_says_which_engine_decodes(apps: Apps) -> None:
    assert httpx.get(f"{apps.vllm}/healthz", timeout=30).json()["engine"] == "vllm"
    assert httpx.get(f"{apps.native}/healthz", timeout=30).json()["engine"] == "native"
