"""The OpenAI-compatible wire format of requests: bodies (validated) and the errors that refuse them.

Bodies are parsed from JSON by pydantic (never unpickled). Fields the OpenAI API defines but ulpt does
not implement are accepted at their neutral value and refused with a 400 naming the field otherwise,
so a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_STOPS = 4
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """An error answered as an OpenAI error body (`responses.error_body`): message, type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def model_not_found() -> ApiError:
    """The same body for a model that does not exist and one the caller may not see (no existence leak)."""
    return ApiError(
        404,
        "The model does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


_ZERO: dict[str, Any] = {"minimum": 0, "maximum": 0}
_STOP_TEXT: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
_STOP_SCHEMA: dict[str, Any] = {
    "anyOf": [_STOP_TEXT, {"type": "array", "items": _STOP_TEXT, "maxItems": MAX_STOPS}, {"type": "null"}]
}


_TENSOR_FIELD = re.compile(r"embed|tensor|hidden_states|multi_modal", re.IGNORECASE)
"""Body fields that would carry tensors (vLLM's `prompt_embeds`, `inputs_embeds`, ...). Other unknown
fields are ignored, as OpenAI clients send extensions; these are refused, loudly: embeddings are built
by the server from catalog adapters only, and a client that believes it sent some must not get an
answer computed without them. vLLM's own server reads such fields with `torch.load`."""


def _no_boolean_or_text(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("number_type", "must be a number, not a boolean or a string")
    return value


NUMBER = BeforeValidator(_no_boolean_or_text)
"""A numeric field: booleans and strings are refused (pydantic's lax mode reads true as 1)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    model: str = Field(min_length=1, max_length=512)

    @model_validator(mode="before")
    @classmethod
    def _no_tensors(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and _TENSOR_FIELD.search(key) and key not in cls.model_fields:
                    raise PydanticCustomError(
                        "tensor_field",
                        "{field}: clients cannot send embeddings or tensors; the server builds every "
                        "input from catalog adapters and text",
                        {"field": key},
                    )
        return data

    # `max_tokens: true`, `"2"` or `stream: 1` are a client's mistakes, not 1, 2 or true (as in specs);
    # 2.0 is an integer to JSON Schema (and so to the published schema), so it stays one here.
    max_tokens: Annotated[int | None, NUMBER] = Field(default=None, ge=1)
    temperature: Annotated[float, NUMBER] = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: Annotated[float, NUMBER] = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    # json_schema_extra: what the validators below accept, so the OpenAPI schema says it too.
    n: Annotated[int, NUMBER] = Field(default=1, json_schema_extra={"minimum": 1, "maximum": 1})
    stop: str | list[str] | None = Field(default=None, json_schema_extra=_STOP_SCHEMA)
    seed: Annotated[int | None, NUMBER] = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = Field(default=False, strict=True)
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = Field(default=0.0, json_schema_extra=_ZERO)
    frequency_penalty: float = Field(default=0.0, json_schema_extra=_ZERO)
    logprobs: Any = Field(default=None, json_schema_extra={"enum": [None, False, 0]})
    logit_bias: dict[str, float] | None = Field(default=None, json_schema_extra={"maxProperties": 0})
    user: str | None = None
    ignore_eos: bool = Field(default=False, strict=True)
    """vLLM's extension: decode to max_tokens even past the end-of-sequence token (load tests)."""

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences must be 1-{MAX_STOP_CHARS} characters")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported; leave it at 0")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return None

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> None:
        if value:
            raise ValueError("logit_bias is not supported")
        return None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())  # normalized to a list by the validator


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(
        default="",
        json_schema_extra={
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
        },
    )
    echo: bool = Field(default=False, strict=True, json_schema_extra={"enum": [False]})
    suffix: str | None = Field(
        default=None, json_schema_extra={"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}]}
    )
    best_of: int | None = Field(default=None, json_schema_extra={"enum": [None, 1]})

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> None:
        if value:
            raise ValueError("suffix is not supported")
        return None

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> None:
        if value not in (None, 1):
            raise ValueError("best_of is not supported")
        return None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int | None, NUMBER] = Field(default=None, ge=1)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_body(raw: bytes, model: type[_Request]) -> Any:
    """Validate a JSON body; any problem becomes a 400 whose message names the field."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid value")
        if first.get("type") == "json_invalid":
            raise ApiError(400, f"the request body is not valid JSON: {message}") from None
        if first.get("type") == "tensor_field":
            raise ApiError(400, message, param=str(first.get("ctx", {}).get("field"))) from None
        if first.get("type") == "model_type":
            raise ApiError(400, "the request body must be a JSON object") from None
        param = where or None
        raise ApiError(400, f"{where}: {message}" if where else message, param=param) from None
