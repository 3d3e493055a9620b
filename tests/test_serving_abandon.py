"""Against the real local Ray Serve: a client's mistake is a 4xx however empty the request, and a
client that disconnects stops costing decode steps at once (its row leaves the batch)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.serve_fixtures import ServeStack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _post(stack: ServeStack, app: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.base(app)}/v1/completions", json=body, headers=stack.headers(), timeout=60)


@pytest.mark.parametrize("app", ["llama", "t5"])
def test_a_base_model_completion_without_input_is_a_400_and_with_an_adapter_a_completion(
    serve_stack: ServeStack, app: str
) -> None:
    base = f"tiny-{app}"
    for body in ({"model": base}, {"model": base, "prompt": ""}, {"model": base, "prompt": ["hi", ""]}):
        answer = _post(serve_stack, app, {**body, "max_tokens": 4})
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == "prompt"
        assert "empty" in answer.json()["error"]["message"]
    adapter = _post(serve_stack, app, {"model": f"{app}-02", "prompt": "", "max_tokens": 4})
    assert adapter.status_code == 200 and adapter.json()["usage"]["prompt_tokens"] == 0
    assert _post(serve_stack, app, {"model": base, "prompt": "hi", "max_tokens": 4}).status_code == 200


def test_a_disconnected_stream_stops_decoding_and_the_log_counts_what_was_decoded(
    serve_stack: ServeStack,
) -> None:
    """A stream read for one chunk: the replica's decode steps stop with it, and the next request does
    not wait for the abandoned row to reach the length it would have had."""
    handle = serve_stack.handle("llama")
    model = "acme/llama-17:1"
    limit = 240
    # ignore_eos: the row decodes exactly `limit` tokens unless it is stopped, whatever the weights.
    whole = _post(
        serve_stack, "llama", {"model": "llama-17", "prompt": "x", "max_tokens": limit, "ignore_eos": True}
    )
    assert whole.json()["usage"]["completion_tokens"] == limit
    assert whole.json()["choices"][0]["finish_reason"] == "length"
    before = handle.stats.remote().result()
    body = {"model": "llama-17", "prompt": "x", "max_tokens": limit, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{serve_stack.base('llama')}/v1/completions", json=body, headers=serve_stack.headers()
    ) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    # The next request can only start once the abandoned batch has ended (one batch at a time).
    assert _post(serve_stack, "llama", {"model": "tiny-llama", "prompt": "y", "max_tokens": 1}).is_success
    deadline = time.monotonic() + 30
    after = before
    while time.monotonic() < deadline:  # the 499 line is written when the row has left its batch
        after = handle.stats.remote().result()
        if after["models"][model]["by_status"].get("499", 0) > before["models"][model]["by_status"].get(
            "499", 0
        ):
            break
        time.sleep(0.2)
    assert after["models"][model]["by_status"].get("499", 0) == 1 + before["models"][model]["by_status"].get(
        "499", 0
    )
    steps = after["decode_steps"] - before["decode_steps"]
    assert steps < limit // 2, f"{steps} decode steps for an abandoned row and a 1-token request"
