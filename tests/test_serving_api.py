"""The HTTP API against a real local Ray Serve: shapes, the official openai client, mixed batches,
tenancy, and errors that never take the replica down."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import ulpt
from tests.serve_fixtures import ServeStack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "the movie was good. A:"


def _post(
    stack: ServeStack, app: str, path: str, body: Any, tenant: str | None = "acme", **kw: Any
) -> httpx.Response:
    headers = stack.headers(tenant) if tenant else {}
    return httpx.post(f"{stack.base(app)}{path}", json=body, headers=headers, timeout=60, **kw)


def _complete(stack: ServeStack, model: str, app: str = "llama", **body: Any) -> httpx.Response:
    payload = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **body}
    return _post(stack, app, "/v1/completions", payload)


def _sse(text: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_health_and_models_list_only_what_the_tenant_may_use(serve_stack: ServeStack) -> None:
    health = httpx.get(f"{serve_stack.base('llama')}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["model"] == "tiny-llama"
    listed = httpx.get(f"{serve_stack.base('llama')}/v1/models", headers=serve_stack.headers(), timeout=30)
    assert listed.status_code == 200
    ids = {m["id"] for m in listed.json()["data"]}
    assert "tiny-llama" in ids and "llama-best" in ids
    assert {f"llama-{i:02d}:1" for i in range(20)} <= ids
    assert "globex/llama-shared:1" in ids  # public
    assert not any("secret" in i for i in ids) and not any(i.startswith("t5-") for i in ids)
    theirs = httpx.get(
        f"{serve_stack.base('llama')}/v1/models", headers=serve_stack.headers("globex"), timeout=30
    )
    assert {m["id"] for m in theirs.json()["data"]} == {"tiny-llama", "llama-secret:1", "llama-shared:1"}


def test_completion_and_chat_bodies_have_the_openai_shape(serve_stack: ServeStack) -> None:
    done = _complete(serve_stack, "llama-00")
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 8
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )

    several = _complete(serve_stack, "llama-00", prompt=[PROMPT, "one plus two equals"])
    assert [c["index"] for c in several.json()["choices"]] == [0, 1]
    assert several.json()["choices"][0]["text"] == choice["text"]

    chat = _post(
        serve_stack,
        "t5",
        "/v1/chat/completions",
        {
            "model": "t5-02",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "temperature": 0,
        },
    )
    assert chat.status_code == 200, chat.text
    message = chat.json()["choices"][0]["message"]
    assert chat.json()["object"] == "chat.completion" and message["role"] == "assistant"
    assert isinstance(message["content"], str)


@pytest.mark.parametrize("app, model", [("llama", "llama-04"), ("t5", "t5-04")])
def test_streams_are_server_sent_events_that_add_up_to_the_whole_answer(
    serve_stack: ServeStack, app: str, model: str
) -> None:
    whole = _complete(serve_stack, model, app=app, max_tokens=12).json()["choices"][0]["text"]
    streamed = _complete(
        serve_stack, model, app=app, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = _sse(streamed.text)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 12

    chat = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 10,
        "temperature": 0,
    }
    whole_chat = _post(serve_stack, app, "/v1/chat/completions", chat).json()["choices"][0]["message"][
        "content"
    ]
    events = _sse(_post(serve_stack, app, "/v1/chat/completions", {**chat, "stream": True}).text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == whole_chat
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_official_openai_client_works_unchanged(serve_stack: ServeStack) -> None:
    client = openai.OpenAI(
        base_url=f"{serve_stack.base('llama')}/v1", api_key=serve_stack.keys["acme"], max_retries=0
    )
    assert "llama-07:1" in {m.id for m in client.models.list()}
    completion = client.completions.create(model="llama-07", prompt=PROMPT, max_tokens=8, temperature=0)
    text = completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    stream = client.completions.create(
        model="llama-07", prompt=PROMPT, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == text

    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model="llama-best", messages=messages, max_tokens=8, temperature=0)
    answer = chat.choices[0].message.content
    chunks = client.chat.completions.create(
        model="llama-best", messages=messages, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    seeded = [
        client.completions.create(model="llama-07", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=3)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-adapter", prompt=PROMPT, max_tokens=2)
    bad_key = openai.OpenAI(
        base_url=f"{serve_stack.base('llama')}/v1", api_key="ulpt_000000000000_nope-nope-nope-nope-nope"
    )
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model="llama-07", prompt=PROMPT, max_tokens=2)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_serve_batches_16_adapters_together_and_each_row_equals_its_solo_run(
    serve_stack: ServeStack, tiny_models: dict[str, ulpt.BaseModel], family: str
) -> None:
    handle = serve_stack.handle(family)
    names = [f"{family}-{i:02d}" for i in range(16)]
    texts = [f"{PROMPT} {i}" for i in range(16)]
    before = len(handle.stats.remote().result()["recent_batches"])
    handle.configure_batching.remote(16, 10.0).result()  # the batch starts only once all 16 are in
    try:

        async def all_at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120, headers=serve_stack.headers()) as http:
                return await asyncio.gather(
                    *(
                        http.post(
                            f"{serve_stack.base(family)}/v1/completions",
                            json={"model": name, "prompt": text, "max_tokens": 10, "temperature": 0},
                        )
                        for name, text in zip(names, texts)
                    )
                )

        answers = asyncio.run(all_at_once())
    finally:
        handle.configure_batching.remote(32, 0.01).result()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    batches = handle.stats.remote().result()["recent_batches"][before:]
    assert {"rows": 16, "distinct_adapters": 16} in batches
    model = tiny_models[family]
    params = ulpt.SamplingParams(max_new_tokens=10)
    for name, text, answer in zip(names, texts, answers):
        alone = model.generate_batch([(serve_stack.adapters[family][name], text)], [params])[0]
        assert answer.json()["choices"][0]["text"] == alone.text, name


def test_foreign_and_unknown_adapters_get_the_same_404(serve_stack: ServeStack) -> None:
    answers = {
        ref: _complete(serve_stack, ref)
        for ref in ("llama-secret", "globex/llama-secret", "globex/llama-secret:1", "no-such", "bad ref!")
    }
    assert {a.status_code for a in answers.values()} == {404}
    assert len({a.content for a in answers.values()}) == 1
    assert answers["no-such"].json()["error"]["code"] == "model_not_found"
    assert _complete(serve_stack, "globex/llama-shared").status_code == 200  # public
    owner = _post(
        serve_stack,
        "llama",
        "/v1/completions",
        {"model": "llama-secret", "prompt": "x", "max_tokens": 2},
        "globex",
    )
    assert owner.status_code == 200
    wrong_base = _post(serve_stack, "t5", "/v1/completions", {"model": "globex/llama-shared", "prompt": "x"})
    assert wrong_base.status_code == 400 and wrong_base.json()["error"]["code"] == "model_mismatch"


def test_missing_or_invalid_keys_get_401(serve_stack: ServeStack) -> None:
    body = {"model": "llama-00", "prompt": "x", "max_tokens": 2}
    url = f"{serve_stack.base('llama')}/v1/completions"
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {serve_stack.keys['acme']}"},
        {"Authorization": "Bearer ulpt_000000000000_not-a-real-key-at-all-xx"},
        {"Authorization": serve_stack.headers()["Authorization"] + "x"},
    ):
        answer = httpx.post(url, json=body, headers=headers, timeout=30)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "invalid_api_key"
    models = httpx.get(f"{serve_stack.base('llama')}/v1/models", timeout=30)
    assert models.status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "JSON"),
        (b"", "empty"),
        (b"[1, 2]", "object"),
        ({"prompt": "x"}, "model"),
        ({"model": "llama-00", "prompt": "x", "temperature": -1}, "temperature"),
        ({"model": "llama-00", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "llama-00", "prompt": "x", "n": 2}, "n"),
        ({"model": "llama-00", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model": "llama-00", "prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ({"model": "llama-00", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "llama-00", "prompt": "x", "logprobs": 3}, "logprobs"),
        ({"model": "llama-00", "prompt": "x " * 600}, "input"),
        ({"model": "llama-00", "prompt": ["a", "b"], "stream": True}, "stream"),
    ],
)
def test_malformed_bodies_get_400_with_a_message_and_the_replica_lives_on(
    serve_stack: ServeStack, body: Any, field: str
) -> None:
    url = f"{serve_stack.base('llama')}/v1/completions"
    if isinstance(body, bytes):
        answer = httpx.post(url, content=body, headers=serve_stack.headers(), timeout=30)
    else:
        answer = httpx.post(url, json=body, headers=serve_stack.headers(), timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and field.lower() in error["message"].lower()
    assert _complete(serve_stack, "llama-00").status_code == 200


def test_chat_bodies_are_validated_too(serve_stack: ServeStack) -> None:
    for messages in ([], [{"role": "wizard", "content": "x"}], [{"content": "x"}], "hello"):
        answer = _post(
            serve_stack, "llama", "/v1/chat/completions", {"model": "llama-00", "messages": messages}
        )
        assert answer.status_code == 400 and "messages" in answer.json()["error"]["message"]


@pytest.mark.parametrize("field", ["prompt_embeds", "inputs_embeds", "Prompt_Embeddings", "hidden_states"])
def test_requests_carrying_embeddings_are_refused_before_any_decoding(
    serve_stack: ServeStack, field: str
) -> None:
    """The server builds every embedding itself from catalog adapters: a body that carries a tensor
    (vLLM's base64 `torch.save` `prompt_embeds`, or any other embedding-like field) is refused, on
    both routes, instead of being ignored like other unknown fields."""
    payload = "UEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAQABIAYXJjaGl2ZS9kYXRhLnBrbA=="  # a torch.save zip's head
    before = serve_stack.handle("llama").stats.remote().result()["batches"]
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], field: [[0.5] * 64]}
    for path, body in (
        ("/v1/completions", {"model": "llama-00", "prompt": PROMPT, "max_tokens": 4, field: payload}),
        ("/v1/chat/completions", chat),
    ):
        answer = _post(serve_stack, "llama", path, body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == field and "cannot send embeddings" in error["message"]
    assert serve_stack.handle("llama").stats.remote().result()["batches"] == before  # nothing decoded
    unknown = _complete(serve_stack, "llama-00", max_tokens=2, some_extension=True)
    assert unknown.status_code == 200  # other unknown fields are still ignored, as OpenAI clients expect


def test_overload_answers_429_with_retry_after_and_the_auth_less_app_serves_loopback(
    serve_stack: ServeStack,
) -> None:
    url = f"{serve_stack.base('local')}/v1/completions"
    assert (
        httpx.post(url, json={"model": "llama-00", "prompt": PROMPT, "max_tokens": 2}, timeout=30).status_code
        == 200
    )
    assert httpx.get(f"{serve_stack.base('local')}/v1/models", timeout=30).status_code == 200

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            body = {"model": "llama-01", "prompt": PROMPT, "max_tokens": 400, "temperature": 0}
            return await asyncio.gather(*(http.post(url, json=body) for _ in range(12)))

    answers = asyncio.run(flood())
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 5, codes
    assert all(a.headers.get("retry-after") == "2" for a in answers if a.status_code == 429)
    assert httpx.get(f"{serve_stack.base('local')}/healthz", timeout=30).status_code == 200


def test_per_adapter_counts_and_latency_are_recorded(serve_stack: ServeStack) -> None:
    for _ in range(3):
        assert _complete(serve_stack, "llama-09").status_code == 200
    assert _complete(serve_stack, "tiny-llama").status_code == 200  # the bare base model
    stats = serve_stack.handle("llama").stats.remote().result()
    entry = stats["models"]["acme/llama-09:1"]
    assert entry["by_status"]["200"] >= 3 and entry["latency_s_sum"] > 0
    assert stats["models"]["tiny-llama"]["requests"] >= 1
    assert stats["cache"]["compact_count"] >= 1 and stats["cache"]["fetches"] >= 1


def test_the_request_log_has_one_line_per_request_without_keys_or_prompt_text(
    serve_stack: ServeStack,
) -> None:
    import ray

    secret_prompt = "my-private-text-0451"
    assert _complete(serve_stack, "llama-11", prompt=secret_prompt).status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:  # the replica writes its log file itself; give it a moment
        text = "".join(p.read_text(errors="replace") for p in logs.glob("replica_llama_*.log"))
        if "model=acme/llama-11:1 status=200" in text:
            break
        time.sleep(0.5)
    assert "request endpoint=completions tenant=acme model=acme/llama-11:1 status=200" in text
    assert secret_prompt not in text
    assert not any(key in text for key in serve_stack.keys.values())
