"""A hostile tenant against the inference API: loose numbers (`max_tokens: true`, `"2"`, `stream: 1`)
are refused as they are in specs, deeply nested bodies are a 400, never a 500, keys without the `read`
scope are refused, and unknown routes answer in the error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.http_server import stalled_post
from tests.serve_fixtures import ServeStack, deploy_app, tiny_llama_config
from ulpt.sdk import Client
from ulpt_serving.limits import TenantLimits
from ulpt_serving.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_body

LOOSE: list[tuple[str, Any]] = (
    [
        (field, value)
        for field in ("max_tokens", "max_completion_tokens", "seed", "n")
        for value in (True, False, "2", 2.5, "1e3", None if field == "n" else [1])
    ]
    + [
        (field, value)
        for field in ("temperature", "top_p")
        for value in (True, False, "0.5", "NaN", [0.5], {"x": 1})
    ]
    + [
        (field, value)
        for field in ("stream", "ignore_eos", "echo")
        for value in (1, 0, "true", "false", None)
    ]
)


@pytest.mark.parametrize(
    ("field", "value", "chat"),
    [
        (field, value, chat)
        for field, value in LOOSE
        for chat in (False, True)
        if not (field == "max_completion_tokens" and not chat or field == "echo" and chat)  # not its route's
    ],
)
def test_loose_numbers_and_booleans_are_refused_naming_the_field(field: str, value: Any, chat: bool) -> None:
    model = ChatCompletionRequest if chat else CompletionRequest
    body = {"model": "m", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    with pytest.raises(ApiError) as refused:
        parse_body(json.dumps({**body, field: value}).encode(), model)
    assert refused.value.status == 400 and refused.value.param == field, refused.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 1), ("top_p", 1), ("max_tokens", 3), ("max_tokens", 3.0), ("seed", 0)],
)
def test_plain_numbers_still_pass(field: str, value: Any) -> None:
    parsed = parse_body(json.dumps({"model": "m", "prompt": "hi", field: value}).encode(), CompletionRequest)
    assert getattr(parsed, field) == value


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_sampling_values_are_refused(constant: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_body(f'{{"model": "m", "prompt": "hi", "temperature": {constant}}}'.encode(), CompletionRequest)
    assert refused.value.param == "temperature"


@pytest.mark.parametrize("depth", [10, 100, 1000, 100_000])
def test_deeply_nested_bodies_are_a_400(depth: int) -> None:
    body = '{"model": "m", "prompt": "hi", "user": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ApiError) as refused:
        parse_body(body.encode(), CompletionRequest)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "scopes", [["read"], ["train"], ["admin"], ["train", "admin"], ["read", "train", "admin"]]
)
def test_inference_needs_a_key_with_the_read_scope(serve_stack: ServeStack, scopes: list[str]) -> None:
    with Client(home=serve_stack.home, tenant="acme") as acme:
        key = acme.keys.create("scoped", scopes=scopes).key
    auth = {"Authorization": f"Bearer {key}"}
    base = serve_stack.base("llama")
    body = {"model": "llama-00", "prompt": "hi", "max_tokens": 1, "temperature": 0}
    answers = [
        httpx.get(f"{base}/v1/models", headers=auth, timeout=60),
        httpx.post(f"{base}/v1/completions", json=body, headers=auth, timeout=60),
    ]
    for answer in answers:
        if "read" in scopes:
            assert answer.status_code == 200, answer.text
        else:
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["message"] == "this key lacks the 'read' scope"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nope"), ("DELETE", "/v1/models"), ("GET", "/v1/completions")]
)
def test_unknown_routes_answer_in_the_error_shape(serve_stack: ServeStack, method: str, path: str) -> None:
    answer = httpx.request(
        method, serve_stack.base("llama") + path, headers=serve_stack.headers(), timeout=60
    )
    assert answer.status_code in (404, 405) and set(answer.json()) == {"error"}, answer.text


async def _trickle(body: bytes, pieces: int, pause_s: float) -> AsyncIterator[bytes]:
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        yield body[start : start + step]
        await asyncio.sleep(pause_s)


@pytest.fixture(scope="module")
def limited_app(serve_stack: ServeStack) -> Iterator[str]:
    """The tiny llama with a small per-tenant share: 2 requests at once, a body may pause 1 s."""
    from ray import serve

    limits = TenantLimits(max_requests=2, max_streams=1, body_idle_timeout_s=1.0, retry_after_s=3)
    prefix = deploy_app("limited", tiny_llama_config(serve_stack, limits=limits))
    try:
        yield serve_stack.url + prefix
    finally:
        serve.delete("limited")


def test_slow_bodies_hold_only_their_tenants_share_of_inference(
    serve_stack: ServeStack, limited_app: str
) -> None:
    body = json.dumps({"model": "llama-00", "prompt": "hi", "max_tokens": 4, "temperature": 0}).encode()

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=limited_app, timeout=60) as client:
            slow = [
                asyncio.create_task(
                    client.post(
                        "/v1/completions", content=_trickle(body, 8, 0.5), headers=serve_stack.headers()
                    )
                )
                for _ in range(2)
            ]
            await asyncio.sleep(1.5)  # both slow bodies are inside the replica, holding acme's share
            refused = await client.post("/v1/completions", content=body, headers=serve_stack.headers())
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "3"
            other = await client.post("/v1/completions", content=body, headers=serve_stack.headers("globex"))
            assert other.status_code == 404, (
                other.text
            )  # llama-00 is acme's: globex is answered, not throttled
            assert [a.status_code for a in await asyncio.gather(*slow)] == [200, 200]
            again = await client.post("/v1/completions", content=body, headers=serve_stack.headers())
            assert again.status_code == 200, again.text

    asyncio.run(scenario())


def test_an_inference_body_that_stops_arriving_is_a_408(serve_stack: ServeStack, limited_app: str) -> None:
    body = json.dumps({"model": "llama-00", "prompt": "hi", "max_tokens": 1}).encode()
    headers = {**serve_stack.headers(), "Content-Type": "application/json"}
    status, answer = stalled_post(serve_stack.url, "/limited/v1/completions", headers, body[:10], len(body))
    assert status == 408, answer
    assert set(json.loads(answer)) == {"error"}
