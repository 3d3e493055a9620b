"""Response bodies and stream events, built from the pydantic models `openapi` declares.

One declaration serves the published schema and the wire: a body that stops matching its model fails
here, in the server, instead of surprising a generated client. Bodies are dumped with `exclude_unset`,
so an optional key (a model entry's `alias_of`, a chunk's `usage`, a delta's `role`) appears only where
it is given, as OpenAI's API sends it; every other field is always passed explicitly.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ulpt.errors import first_line
from ulpt.registry import AdapterRecord
from ulpt_serving import openapi
from ulpt_serving.protocol import ApiError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by a proxy in front (nginx), so every token reaches the client at once."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


def _dump(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_unset=True)


def _finish(reason: str) -> openapi.FinishReason:
    """The engine's finish reason, typed as the API names it; the model checks the value when built."""
    return cast(openapi.FinishReason, reason)


def _usage(prompt_tokens: int, completion_tokens: int) -> openapi.Usage:
    return openapi.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


# ---- whole answers ------------------------------------------------------------------------------


def completion(
    rid: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """choices: (text, finish_reason) per prompt."""
    body = openapi.CompletionResponse(
        id=rid,
        object="text_completion",
        created=_now(),
        model=model,
        choices=[
            openapi.CompletionChoice(index=i, text=text, logprobs=None, finish_reason=_finish(reason))
            for i, (text, reason) in enumerate(choices)
        ],
        usage=_usage(prompt_tokens, completion_tokens),
    )
    return _dump(body)


def chat(
    rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    message = openapi.AssistantMessage(role="assistant", content=text)
    choice = openapi.ChatChoice(index=0, message=message, logprobs=None, finish_reason=_finish(finish_reason))
    body = openapi.ChatCompletionResponse(
        id=rid,
        object="chat.completion",
        created=_now(),
        model=model,
        choices=[choice],
        usage=_usage(prompt_tokens, completion_tokens),
    )
    return _dump(body)


def model_entry(model_id: str, record: AdapterRecord, alias_of: str | None = None) -> openapi.ModelEntry:
    """An adapter (or an alias of one) as `/v1/models` lists it; `alias_of` only on aliases."""
    alias = {"alias_of": alias_of} if alias_of is not None else {}
    return openapi.ModelEntry(
        id=model_id,
        object="model",
        created=int(record.created_at.timestamp()),
        owned_by=record.tenant,
        root=record.base_model,
        parent=record.base_model,
        method=record.method,
        n_tokens=record.n_tokens,
        **alias,
    )


def base_model_entry(name: str) -> openapi.ModelEntry:
    return openapi.ModelEntry(id=name, object="model", created=0, owned_by="ulpt")


def model_list(entries: list[openapi.ModelEntry], next_cursor: str | None) -> dict[str, Any]:
    body = openapi.ModelList(
        object="list", data=entries, has_more=next_cursor is not None, next_cursor=next_cursor
    )
    return _dump(body)


def error_body(error: ApiError) -> dict[str, Any]:
    detail = openapi.ErrorDetail(
        message=first_line(error.message), type=error.type, param=error.param, code=error.code
    )
    return _dump(openapi.ErrorResponse(error=detail))


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


# ---- stream events ------------------------------------------------------------------------------


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None) -> dict[str, Any]:
    choice = openapi.CompletionChunkChoice(
        index=0,
        text=text,
        logprobs=None,
        finish_reason=None if finish_reason is None else _finish(finish_reason),
    )
    body = openapi.CompletionChunk(
        id=rid, object="text_completion", created=_now(), model=model, choices=[choice]
    )
    return _dump(body)


def chat_chunk(rid: str, model: str, delta: openapi.ChatDelta, finish_reason: str | None) -> dict[str, Any]:
    choice = openapi.ChatChunkChoice(
        index=0,
        delta=delta,
        logprobs=None,
        finish_reason=None if finish_reason is None else _finish(finish_reason),
    )
    body = openapi.ChatCompletionChunk(
        id=rid, object="chat.completion.chunk", created=_now(), model=model, choices=[choice]
    )
    return _dump(body)


def usage_chunk(
    rid: str, model: str, chat: bool, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage` is set: no choices, only usage."""
    usage = _usage(prompt_tokens, completion_tokens)
    body: BaseModel
    if chat:
        body = openapi.ChatCompletionChunk(
            id=rid, object="chat.completion.chunk", created=_now(), model=model, choices=[], usage=usage
        )
    else:
        body = openapi.CompletionChunk(
            id=rid, object="text_completion", created=_now(), model=model, choices=[], usage=usage
        )
    return _dump(body)


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")
