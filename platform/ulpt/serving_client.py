"""`client.generate(model, text)`: an adapter's (or the base model's) answer, from a server or in process.

With a server URL (`base_url=` or ULPT_SERVE_URL) the text goes to its OpenAI-compatible
/v1/completions (key from `api_key=` or ULPT_API_KEY); otherwise the adapter is loaded from the
client's catalog + store (checked) and run on its base model in this process, which is loaded once
and kept for later calls. Only the standard library speaks HTTP here; keys never appear in errors.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ulpt.errors import ModelNotFoundError, NotFoundError, SpecError, UlptError, redact_url
from ulpt.models import BaseModel, SamplingParams, load_base_model

if TYPE_CHECKING:
    from ulpt.sdk import Client

_MODELS: dict[str, BaseModel] = {}
_MODELS_LOCK = threading.Lock()


class ServerError(UlptError):
    """The server refused or failed the request; the message is the server's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}")
        self.status = status


def generate(
    client: Client,
    model: str,
    text: str,
    *,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    base_url: str | None = None,
    api_key: str | None = None,
    base_model: str | BaseModel | None = None,
    timeout: float = 300.0,
) -> str:
    """Text generated after `text` by adapter `model` (name, name:version, alias) or by a base model.

    `base_model` (in process only) overrides the model the adapter's record names, e.g. a local folder.
    """
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop)
    )
    url = base_url or os.environ.get("ULPT_SERVE_URL")
    if url:
        return _over_http(url, api_key or os.environ.get("ULPT_API_KEY"), model, text, params, timeout)
    return _in_process(client, model, text, params, base_model)


def _over_http(
    url: str, key: str | None, model: str, text: str, params: SamplingParams, timeout: float
) -> str:
    body: dict[str, Any] = {
        "model": model,
        "prompt": text,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    endpoint = url.rstrip("/").removesuffix("/v1") + "/v1/completions"
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _server_error(exc) from None
    except urllib.error.URLError as exc:
        raise UlptError(f"cannot reach the ulpt server at {redact_url(endpoint)}: {exc.reason}") from None
    return str(answer["choices"][0]["text"])


def _server_error(exc: urllib.error.HTTPError) -> UlptError:
    try:
        message = json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = exc.reason
    if exc.code == 404:
        return NotFoundError(f"server answered 404: {message}")
    return ServerError(exc.code, str(message))


def _in_process(
    client: Client, ref: str, text: str, params: SamplingParams, base_model: str | BaseModel | None
) -> str:
    try:
        record = client.adapters.get(ref)
    except (NotFoundError, SpecError):
        record = None
    if record is None:  # not an adapter: maybe a base model's name or folder
        try:
            model = base_model if isinstance(base_model, BaseModel) and base_model.name == ref else _base(ref)
        except ModelNotFoundError:
            raise NotFoundError(
                f"no adapter or base model named {ref!r} (tenant {client.tenant!r})"
            ) from None
        return model.generate_batch([(None, text)], [params])[0].text
    adapter = record.load()
    model = _base(base_model or record.base_model)
    return model.generate_batch([(adapter, text)], [params])[0].text


def _base(model: str | BaseModel) -> BaseModel:
    if isinstance(model, BaseModel):
        return model
    with _MODELS_LOCK:
        if model not in _MODELS:
            _MODELS[model] = load_base_model(model)
        return _MODELS[model]
