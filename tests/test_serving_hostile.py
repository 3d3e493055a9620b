"""A hostile tenant against the inference API: loose numbers (`max_tokens: true`, `"2"`, `stream: 1`)
are refused as they are in specs, deeply nested bodies are a 400, never a 500, keys without the `read`
scope are refused, and unknown routes answer in the error shape."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.serve_fixtures import ServeStack
from ulpt.sdk import Client
from ulpt_serving.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_body

LOOSE: list[tuple[str, Any]] = (
    [
        (field, value)
        for field in ("max_tokens", "max_completion_tokens", "seed", "n")
        for value in (True, False, "2", 2.0, "1e3", None if field == "n" else [1])
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


@pytest.mark.parametrize(("field", "value"), LOOSE)
@pytest.mark.parametrize("chat", [False, True])
def test_loose_numbers_and_booleans_are_refused_naming_the_field(field: str, value: Any, chat: bool) -> None:
    model = ChatCompletionRequest if chat else CompletionRequest
    if field == "max_completion_tokens" and not chat or field == "echo" and chat:
        pytest.skip("not a field of this route")
    body = {"model": "m", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    with pytest.raises(ApiError) as refused:
        parse_body(json.dumps({**body, field: value}).encode(), model)
    assert refused.value.status == 400 and refused.value.param == field, refused.value.message


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", 1), ("top_p", 1), ("max_tokens", 3), ("seed", 0)]
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
