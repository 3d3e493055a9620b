"""Who may send a request and what it may ask for, checked before the request costs the model anything.

The order is the handlers' order: the caller first (a key, or a loopback address when the server runs
without keys), so an anonymous client learns nothing about models or limits; the body's size before it
is parsed; then the prompts, their token counts and the sampling against this server's and this
model's limits. Every refusal is an `ApiError` naming the field a client has to change.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ulpt.errors import UlptError
from ulpt.models import BaseModel, SamplingParams
from ulpt_serving import answers, protocol
from ulpt_serving.config import ServeConfig, is_loopback
from ulpt_serving.engine import Engine
from ulpt_serving.limits import TenantSlots, TooMany
from ulpt_serving.protocol import ApiError
from ulpt_serving.tenancy import Authenticator

MAX_BODY_BYTES = 4 << 20  # a completion or chat body, refused above this before it is parsed
INFERENCE_SCOPE = "read"
"""The scope a key needs for every inference route: using an adapter reads it, as the control plane's
GET routes do; a train-only or admin-only key is refused (403), as it is on the control plane."""


def max_positions(model: BaseModel) -> int | None:
    """Positions a decoder-only model can attend over (T5's relative positions have no hard limit)."""
    if model.is_encoder_decoder:
        return None
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


class Admission:
    """The limits of one replica: its `ServeConfig` and what its base model can hold."""

    def __init__(self, config: ServeConfig, auth: Authenticator, engine: Engine) -> None:
        self.config = config
        self.auth = auth
        self.engine = engine
        self.max_positions = max_positions(engine.model)
        self.slots = TenantSlots(config.limits)

    async def tenant(self, request: Request) -> str:
        """The caller's tenant: from its Bearer key (which must hold the `read` scope), or the configured
        one for a loopback caller when the server runs without keys (anyone else gets 403 there)."""
        if not self.config.auth:
            client = request.client.host if request.client else None
            if client is None or not is_loopback(client):
                raise ApiError(
                    403,
                    "this server runs without API keys and answers loopback clients only",
                    type="permission_error",
                )
            return self.config.tenant
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise protocol.unauthorized()
        identity = await answers.from_catalog(self.auth.identity_for, key, retry_after=self.retry_after())
        if identity is None:
            raise protocol.unauthorized()
        if INFERENCE_SCOPE not in identity.scopes:
            raise ApiError(403, f"this key lacks the {INFERENCE_SCOPE!r} scope", type="permission_error")
        return identity.tenant

    def take_slot(self, tenant: str, stream: bool = False) -> None:
        """A request slot of `tenant` (`stream`: a stream slot on top of the one it holds), or 429."""
        try:
            if stream:
                self.slots.acquire_stream(tenant)
            else:
                self.slots.acquire(tenant)
        except TooMany as exc:
            retry = {"Retry-After": str(self.config.limits.retry_after_s)}
            raise ApiError(
                429, str(exc), type="rate_limit_error", code="rate_limit_exceeded", headers=retry
            ) from None

    def retry_after(self) -> dict[str, str]:
        return answers.retry_after(self.config.retry_after_s)

    def check_prompts(self, texts: list[str], stream: bool) -> None:
        most = self.config.max_prompts_per_request
        if not texts or len(texts) > most:
            raise ApiError(400, f"prompt: give 1 to {most} prompts", param="prompt")
        if stream and len(texts) > 1:
            raise ApiError(400, "stream=true takes a single prompt", param="prompt")

    def tokenize_inputs(self, texts: list[str], adapter_tokens: int, chat: bool) -> list[list[int]]:
        """Token ids of each input, which the request then carries to the decode loop (tokenized once).
        The bare base model needs at least one token (an adapter's prompt is a start)."""
        inputs = [self._tokenize(t, adapter_tokens, chat) for t in texts]
        if adapter_tokens == 0 and any(not ids for ids in inputs):
            raise answers.empty_input(chat)
        return inputs

    def _tokenize(self, text: str, adapter_tokens: int, chat: bool) -> list[int]:
        """Tokens of one input; one far beyond what the server accepts is refused before it costs memory."""
        most = self.config.max_prompt_tokens
        if self.max_positions is not None:
            most = min(most, self.max_positions - 1)
        ids = self.engine.tokenize(text, most - adapter_tokens)
        if ids is None:
            raise ApiError(
                400,
                f"the input is longer than the {most} tokens this server accepts (with the adapter's prompt)",
                param="messages" if chat else "prompt",
            )
        return ids

    def sampling(self, body: Any, chat: bool, input_tokens: int) -> SamplingParams:
        """The request's sampling, its `max_tokens` defaulted and capped so input + output fit the model."""
        cfg = self.config
        requested = body.requested_max_tokens if chat else body.max_tokens
        max_tokens = (
            requested
            if requested is not None
            else (cfg.default_chat_max_tokens if chat else cfg.default_max_tokens)
        )
        field = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
        if max_tokens > cfg.max_tokens_limit:
            raise ApiError(
                400, f"{field} must be at most {cfg.max_tokens_limit}, got {max_tokens}", param=field
            )
        if input_tokens > cfg.max_prompt_tokens:
            raise ApiError(
                400,
                f"the input is {input_tokens} tokens (with the adapter's prompt); "
                f"at most {cfg.max_prompt_tokens}",
                param="messages" if chat else "prompt",
            )
        if self.max_positions is not None:
            if input_tokens >= self.max_positions:
                raise ApiError(
                    400,
                    f"the input is {input_tokens} tokens; the model holds {self.max_positions}",
                    param="messages" if chat else "prompt",
                )
            if requested is None:
                max_tokens = min(max_tokens, self.max_positions - input_tokens)
            elif input_tokens + max_tokens > self.max_positions:
                raise ApiError(
                    400,
                    f"input ({input_tokens} tokens) + {field} ({max_tokens}) exceed the model's "
                    f"{self.max_positions} positions",
                    param=field,
                )
        try:  # a temperature or top_p next to 0 decodes greedily (SamplingParams.greedy)
            return SamplingParams(
                max_new_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
                stop=body.stops,
                ignore_eos=body.ignore_eos,
            )
        except UlptError as exc:
            raise ApiError(400, str(exc)) from None
