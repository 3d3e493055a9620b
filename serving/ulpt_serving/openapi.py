"""The OpenAPI description of the HTTP API, so that generated clients and schema fuzzers see what it does.

The handlers read their bodies themselves (authentication first, a size cap before parsing, OpenAI
error bodies), so FastAPI cannot infer the request schemas: they come from `protocol`'s pydantic
models here, along with the response bodies and every error status a route can answer. The bodies
sent are built from these same models (`responses`), so the schema and the wire cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ulpt_serving.protocol import ChatCompletionRequest, CompletionRequest

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: FinishReason


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: FinishReason | None


class CompletionChunk(BaseModel):
    """One event of a streamed completion; with `stream_options.include_usage` a last one carries only
    `usage` (no choices)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ChatDelta(BaseModel):
    """What a chat chunk adds to the message: the role once, first, then content; empty at the end."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion; the usage-only last one as for `CompletionChunk`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None
    method: str | None = None
    n_tokens: int | None = None
    alias_of: str | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelEntry]
    has_more: bool
    next_cursor: str | None


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    family: str
    engine: Literal["vllm", "native"]
    """What decodes in this replica: vLLM's continuous batching or ulpt's own batched loop."""
    adapters_cached: int
    adapters_hot: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _error(description: str, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()
        }
    return out


RETRY_AFTER = "Seconds to wait before retrying."
SSE_EVENT = {
    "description": "One event; `data` is a JSON chunk (completion, chat chunk, error) or `[DONE]`.",
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"const": "message"}},
}
UNAUTHORIZED = _error("Missing, malformed, unknown or revoked API key.", **{"WWW-Authenticate": "Bearer"})
OVERLOADED = {
    "description": "The replica's queue is full (answered by Ray Serve's proxy, as plain text), or the "
    "key's tenant already holds its share of the replica (`limits.max_requests` or `max_streams`: an "
    "error body).",
    "model": ErrorResponse,
    "content": {"text/plain": {"schema": {"type": "string"}}},
    "headers": {"Retry-After": {"description": RETRY_AFTER, "schema": {"type": "string"}}},
}
MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("An invalid `limit` or `after`."),
    401: UNAUTHORIZED,
    403: _error(
        "A key without the `read` scope, or a server without API keys called from a non-loopback address."
    ),
    429: OVERLOADED,
    503: _error("The catalog is unreachable.", **{"Retry-After": RETRY_AFTER}),
}
GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with `stream: true`, server-sent events ending with `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    400: _error(
        "Malformed JSON or field, or a limit of this server or model: prompts per request, input tokens, "
        "max_tokens, input + max_tokens beyond the model's positions, an adapter of another base model."
    ),
    401: UNAUTHORIZED,
    403: MODELS_RESPONSES[403],
    404: _error("The adapter does not exist or the key's tenant may not use it (one body for both)."),
    408: _error("The body stopped arriving (`limits.body_idle_timeout_s`) or took too long in all."),
    413: _error("The body is larger than the server accepts."),
    429: OVERLOADED,
    500: _error("The adapter's stored data failed its checks, or generation failed."),
    503: _error("The catalog or the store is unreachable.", **{"Retry-After": RETRY_AFTER}),
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a required JSON body of `model` (its schema is added by `install`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` add the request models and the Bearer scheme, and drop FastAPI's 422 (never
    answered: a bad query parameter gets 400 like any other invalid field)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                servers=app.servers,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (CompletionRequest, ChatCompletionRequest):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for route, path in schema.get("paths", {}).items():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
                    if route.startswith("/v1/"):  # a server started with auth=False needs no key
                        operation["security"] = [{"bearer": []}]
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
