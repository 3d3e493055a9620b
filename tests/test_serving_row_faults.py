"""Over HTTP, a row that fails while decoding fails only its own request (500) while the requests it
shared a batch with complete with exactly the answers they get alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

import ulpt
from tests.serve_fixtures import ServeStack, deploy_app, tiny_llama_config
from ulpt.models import BaseModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

APP = "faulty"
MARKER = "decode-fault-0451"


def model_failing_on(marker: str, path: str) -> BaseModel:
    """The tiny model, except that a batch holding a row whose text contains `marker` fails to start
    (what a bad row does to a batched forward pass); built in the replica from this importable factory."""
    model = ulpt.load_base_model(path)
    inner = model.iter_generate

    def iter_generate(rows: Any, *rest: Any) -> Any:
        # Served rows carry the token ids admission computed; their text is one decode away.
        texts = [
            row_input if isinstance(row_input, str) else model.tokenizer.decode(row_input)
            for _, row_input in rows
        ]
        if any(marker in text for text in texts):
            raise RuntimeError("a decoding fault in one row")
        return inner(rows, *rest)

    model.iter_generate = iter_generate  # type: ignore[method-assign]
    return model


@pytest.fixture(scope="module")
def faulty_app(serve_stack: ServeStack) -> Iterator[str]:
    from ray import serve

    from ulpt_serving.app import Dependencies

    # batch_wait_timeout_s: long enough for the concurrent requests below to share a batch
    config = tiny_llama_config(serve_stack, batch_wait_timeout_s=0.5)
    deps = Dependencies(model_factory=partial(model_failing_on, MARKER, config.model))
    prefix = deploy_app(APP, config, deps)
    try:
        yield f"{serve_stack.url}{prefix}"
    finally:
        serve.delete(APP)


async def _complete_together(url: str, headers: dict[str, str], bodies: list[dict[str, Any]]) -> list[Any]:
    async with httpx.AsyncClient(timeout=120, headers=headers) as http:
        return list(await asyncio.gather(*(http.post(f"{url}/v1/completions", json=b) for b in bodies)))


def test_a_failing_row_fails_alone_and_its_batch_mates_complete(
    faulty_app: str, serve_stack: ServeStack
) -> None:
    def body(i: int, text: str, **extra: Any) -> dict[str, Any]:
        return {"model": f"llama-{i:02d}", "prompt": text, "max_tokens": 6, "temperature": 0, **extra}

    good = [body(i, f"the movie was good {i}. A:") for i in range(3)]
    alone = [
        httpx.post(f"{faulty_app}/v1/completions", json=b, headers=serve_stack.headers(), timeout=120)
        for b in good
    ]
    assert [a.status_code for a in alone] == [200] * 3
    batches_before = serve_stack.handle(APP).stats.remote().result()["batches"]

    bad = body(3, f"please {MARKER}")
    answers = asyncio.run(_complete_together(faulty_app, serve_stack.headers(), [*good, bad]))
    assert [a.status_code for a in answers] == [200, 200, 200, 500], [a.text for a in answers]
    assert [a.json()["choices"][0]["text"] for a in answers[:3]] == [
        a.json()["choices"][0]["text"] for a in alone
    ]
    assert answers[3].json()["error"]["type"] == "server_error"
    stats = serve_stack.handle(APP).stats.remote().result()
    assert stats["batches"] - batches_before == 1, "the four requests should have shared one batch"
    assert stats["recent_batches"][-1]["rows"] == 4

    streamed = httpx.post(
        f"{faulty_app}/v1/completions",
        json={**bad, "stream": True},
        headers=serve_stack.headers(),
        timeout=120,
    )
    assert streamed.status_code == 200 and '"server_error"' in streamed.text  # the error as an event
    assert streamed.text.rstrip().endswith("data: [DONE]")
