"""The Ray Serve application: an OpenAI-compatible FastAPI ingress whose batches mix adapters.

    serve run ulpt_serving.app:build_app model=smollm2-135m port=8000      # or `ulpt serve`

One deployment does both jobs, so a request costs one hop: its handlers authenticate, resolve the
`model` reference in the catalog, load the adapter into the replica's cache (single flight) and
validate everything; only then does the request join `_batched`, a `@serve.batch` method whose
batches are NOT split by adapter (the adapter travels in the request, not in `serve.multiplexed`'s
model id), so one decode loop serves rows of many adapters. Every request streams from that loop
token by token; non-streaming requests just collect. Errors end as OpenAI error bodies with a
status (400/401/404/429/500/503), never as a dead replica.
"""

# No `from __future__ import annotations` here: FastAPI reads handler annotations at runtime, and the
# class Ray ships to replicas carries no module globals to resolve string annotations against.
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from ulpt.errors import AdapterFormatError, CatalogError, NotFoundError, SpecError, StoreError, UlptError
from ulpt.models import BaseModel, SamplingParams, load_base_model
from ulpt.registry import AdapterRecord, Locations, Registry
from ulpt_serving import answers, openapi, protocol
from ulpt_serving.cache import CompactAdapter
from ulpt_serving.config import ServeConfig, is_loopback
from ulpt_serving.engine import BatchItem, Engine, RowFailure, TextStream
from ulpt_serving.metrics import ServingMetrics
from ulpt_serving.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from ulpt_serving.requestlog import RequestInfo, RequestLog
from ulpt_serving.tenancy import Authenticator, Resolver

logger = logging.getLogger("ray.serve").getChild("ulpt")
# Everything the deployment class uses is defined above it: serve.ingress wraps the class in a new
# one that Ray pickles by value when it is decorated, capturing only the globals that exist by then.

MAX_BODY_BYTES = 4 << 20
MAX_MODELS_LISTED = 1000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

api = FastAPI(title="ulpt", description="Mixed-adapter serving of ULPT prompt adapters (OpenAI-compatible).")
openapi.install(api)


@dataclass(frozen=True)
class Dependencies:
    """What a replica builds its model and catalog access from; tests pass factories for tiny setups.

    Factories travel to the replica process (Ray pickles the deployment's init arguments), so they must
    be importable functions or partials of them, not objects holding open connections.
    """

    model_factory: Callable[[], BaseModel] | None = None
    """Default: `load_base_model(config.model)` in `config.dtype`, on a GPU when `config.num_gpus` > 0."""
    registry_factory: Callable[[], Registry] | None = None
    """Default: the catalog + store of `config.home` / `catalog_url` / `store_url` (as `ulpt.Client`)."""


def default_model(config: ServeConfig) -> BaseModel:
    """The base model in `config.dtype`, on a GPU when the replica reserves one and CUDA is there."""
    device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return load_base_model(config.model, device=device, dtype=config.dtype)


def default_registry(config: ServeConfig) -> Registry:
    return Locations.resolve(config.home, config.catalog_url, config.store_url).open_registry()


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to."""

    label: str
    """Canonical name for logs and metrics: the base model's name or `tenant/name:version`."""
    adapter_key: str | None = None
    adapter: CompactAdapter | None = None
    n_tokens: int = 0


def _model_entry(model_id: str, record: AdapterRecord, alias_of: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": int(record.created_at.timestamp()),
        "owned_by": record.tenant,
        "root": record.base_model,
        "parent": record.base_model,
        "method": record.method,
        "n_tokens": record.n_tokens,
    }
    if alias_of is not None:
        entry["alias_of"] = alias_of
    return entry


def _timed_next(
    steps: Iterator[dict[int, int | RowFailure]],
) -> tuple[dict[int, int | RowFailure] | None, float]:
    """The next decoding step and the seconds it took in the model (queueing for the thread excluded)."""
    started = time.perf_counter()
    step = next(steps, None)
    return step, time.perf_counter() - started


def _max_positions(model: BaseModel) -> int | None:
    """Positions a decoder-only model can attend over (T5's relative positions have no hard limit)."""
    if model.is_encoder_decoder:
        return None
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


_mixed_batch: Any = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
"""Callers pass ONE item and get an async iterator of its tokens; Serve gathers items into batches
(sizes set by `configure_batching`). Typed Any: serve.batch's stubs do not cover async generators."""


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A bad query parameter gets the same OpenAI error body (400) as a bad body field, not FastAPI's 422."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    error = ApiError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None)
    return JSONResponse(error.body(), status_code=400)


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it exceeds MAX_BODY_BYTES (declared or while streaming in)."""
    too_large = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="ulpt")
@serve.ingress(api)
class ULPTServer:
    """A replica: the base model once, an adapter cache, and the HTTP API in front of them."""

    def __init__(self, config: ServeConfig, deps: Dependencies | None = None) -> None:
        deps = deps or Dependencies()
        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        model = deps.model_factory() if deps.model_factory else default_model(config)
        self.engine = Engine.create(model, config)
        self.registry = (deps.registry_factory or partial(default_registry, config))()
        self.auth = Authenticator(self.registry, config.auth_cache_ttl_s)
        self.resolver = Resolver(self.registry, config.resolve_cache_ttl_s)
        self.metrics = ServingMetrics(per_adapter=config.per_adapter_metrics)
        self.requests = RequestLog(self.metrics, config.log_requests)
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="ulpt-decode")
        self.max_positions = _max_positions(model)
        self.configure_batching(config.max_batch_size, config.batch_wait_timeout_s)

    # ---- handle-only methods (tests, benchmarks, operators) -------------------------------------

    def configure_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Change how batches form without a redeploy."""
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def stats(self) -> dict[str, Any]:
        """Per-adapter counts, recent batch compositions and cache state of this replica."""
        return self.metrics.summary(self.engine.cache.stats())

    # ---- HTTP --------------------------------------------------------------------------------

    @api.get("/healthz", response_model=openapi.Health)
    async def healthz(self) -> dict[str, Any]:
        cache = self.engine.cache.stats()
        return {
            "status": "ok",
            "model": self.config.base_model_name,
            "family": self.engine.model.family,
            "adapters_cached": cache.compact_count,
            "adapters_hot": cache.hot_count,
        }

    @api.get("/v1/models", response_model=openapi.ModelList, responses=openapi.MODELS_RESPONSES)
    async def models(
        self,
        request: Request,
        limit: int = Query(MAX_MODELS_LISTED, ge=1, le=MAX_MODELS_LISTED),
        after: str | None = Query(
            None, pattern="^[A-Za-z0-9_-]+$", description="`next_cursor` of the previous page, unchanged."
        ),
    ) -> Response:
        info = RequestInfo("models")
        status = 200
        try:
            tenant = await self._tenant(request)
            return JSONResponse(await self._catalog(self._list_models, tenant, limit, after))
        except ApiError as exc:
            status = exc.status
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        finally:
            self.requests.record(info, status)

    @api.post(
        "/v1/completions",
        response_model=openapi.CompletionResponse,
        responses=openapi.GENERATE_RESPONSES,
        openapi_extra=openapi.json_body(CompletionRequest),
    )
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    @api.post(
        "/v1/chat/completions",
        response_model=openapi.ChatCompletionResponse,
        responses=openapi.GENERATE_RESPONSES,
        openapi_extra=openapi.json_body(ChatCompletionRequest),
    )
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    # ---- the request path ----------------------------------------------------------------------

    async def _generate(self, request: Request, chat: bool) -> Response:
        info = RequestInfo("chat" if chat else "completions")
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        items: list[BatchItem] = []
        try:
            info.tenant = await self._tenant(request)
            raw = await _read_body(request)
            body: Any = protocol.parse_body(raw, ChatCompletionRequest if chat else CompletionRequest)
            target = await self._target(info.tenant, body.model)
            info.label = target.label
            texts = [self._chat_text(body)] if chat else body.prompts
            if not texts or len(texts) > self.config.max_prompts_per_request:
                raise ApiError(
                    400, f"prompt: give 1 to {self.config.max_prompts_per_request} prompts", param="prompt"
                )
            if body.stream and len(texts) > 1:
                raise ApiError(400, "stream=true takes a single prompt", param="prompt")
            counts = [self._count_tokens(t, target.n_tokens, chat) for t in texts]
            if target.n_tokens == 0 and 0 in counts:
                raise answers.empty_input(chat)
            params = self._params(body, chat, max(counts) + target.n_tokens)
            items = [BatchItem(t, params, target.adapter_key, target.adapter) for t in texts]
            info.prompt_tokens = sum(counts)
            if body.stream:
                info.stream = True
                events = self._stream(items[0], body, rid, chat, info)
                return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
            results = await self._collect_all(items)
        except ApiError as exc:
            self.requests.record(info, exc.status)
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except asyncio.CancelledError:
            self.requests.record(info, 499, sum(it.control.generated for it in items))  # client went away
            raise
        except Exception:
            logger.exception("request %s failed", rid)
            self.requests.record(info, 500, sum(it.control.generated for it in items))
            return JSONResponse(answers.internal_error().body(), status_code=500)
        completion_tokens = sum(len(r.token_ids) for r in results)
        self.requests.record(info, 200, completion_tokens)
        if chat:
            out = protocol.chat_body(
                rid,
                body.model,
                results[0].sent,
                results[0].finish_reason or "length",
                info.prompt_tokens,
                completion_tokens,
            )
        else:
            choices = [(r.sent, r.finish_reason or "length") for r in results]
            out = protocol.completion_body(rid, body.model, choices, info.prompt_tokens, completion_tokens)
        return JSONResponse(out)

    async def _collect_all(self, items: list[BatchItem]) -> list[TextStream]:
        """Every prompt of a request; when one fails (or the client leaves), the others stop decoding."""
        try:
            return list(await asyncio.gather(*(self._collect(item) for item in items)))
        except BaseException:
            for item in items:
                item.control.abandon()
            raise

    async def _collect(self, item: BatchItem) -> TextStream:
        stream = TextStream(self.engine.model, item.params, incremental=False)
        try:
            async for token in self._batched(item):
                if isinstance(token, RowFailure):
                    raise token.error
                stream.push(token)
                if stream.done:
                    break
        finally:
            if not stream.done:
                item.control.abandon()
        stream.finish()
        return stream

    async def _stream(
        self, item: BatchItem, body: Any, rid: str, chat: bool, info: RequestInfo
    ) -> AsyncIterator[bytes]:
        """Server-sent events of one row. A client that disconnects (499) abandons the row, which leaves
        the batch at the next step; its log line is written then, with the tokens really decoded."""
        stream = TextStream(self.engine.model, item.params)
        status = 200

        def chunk(text: str | None, finish: str | None) -> bytes:
            if chat:
                delta = {} if text is None else {"content": text}
                return protocol.sse(protocol.chat_chunk(rid, body.model, delta, finish))
            return protocol.sse(protocol.completion_chunk(rid, body.model, text or "", finish))

        try:
            if chat:
                yield protocol.sse(
                    protocol.chat_chunk(rid, body.model, {"role": "assistant", "content": ""}, None)
                )
            async for token in self._batched(item):
                if isinstance(token, RowFailure):
                    raise token.error
                delta = stream.push(token)
                if delta:
                    yield chunk(delta, None)
                if stream.done:
                    break
            tail = stream.finish()
            if tail:
                yield chunk(tail, None)
            yield chunk(None, stream.finish_reason)
            if body.include_usage:
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield protocol.sse(
                    protocol.usage_chunk(rid, body.model, obj, info.prompt_tokens, len(stream.token_ids))
                )
            yield protocol.SSE_DONE
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away
            raise
        except Exception:
            status = 500
            logger.exception("stream %s failed", rid)
            yield protocol.sse(answers.internal_error().body())
            yield protocol.SSE_DONE
        finally:
            if stream.done or status != 499:
                item.control.abandon()
                self.requests.record(info, status, item.control.generated)
            else:
                item.control.abandon(partial(self.requests.record, info, status))

    @_mixed_batch
    async def _batched(self, items: list[BatchItem]) -> AsyncIterator[list[Any]]:
        """ONE decode loop for rows of any adapters; yields, per step, each row's token (or its end)."""
        self.metrics.batch([it.adapter_key for it in items])
        loop = asyncio.get_running_loop()
        steps = self.engine.steps(items)
        compute_s, n_steps = 0.0, 0
        for item in items:
            item.control.joined = True
        try:
            while True:
                step, seconds = await loop.run_in_executor(self.decoder, _timed_next, steps)
                compute_s += seconds
                if step is None:
                    break
                n_steps += 1
                for i, item in enumerate(items):
                    if i not in step:
                        item.control.release()  # ended (or was abandoned) in the step before
                    elif not isinstance(step[i], RowFailure):
                        item.control.generated += 1
                yield [step.get(i, StopIteration) for i in range(len(items))]
        finally:
            for item in items:
                item.control.release()
            self.metrics.batch_done(compute_s, n_steps)
            self.metrics.cache(self.engine.cache.stats())

    # ---- helpers -------------------------------------------------------------------------------

    async def _tenant(self, request: Request) -> str:
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
        tenant = await self._catalog(self.auth.tenant_for, key)
        if tenant is None:
            raise protocol.unauthorized()
        return tenant

    async def _target(self, tenant: str, ref: str) -> Target:
        base = self.config.base_model_name
        if ref == base:
            return Target(base)
        record: AdapterRecord | None = await self._catalog(self.resolver.resolve, tenant, ref)
        if record is None:
            raise protocol.model_not_found()
        model = self.engine.model
        if record.base_model != base or record.hidden_size != model.hidden_size:
            raise ApiError(
                400,
                f"adapter {ref!r} belongs to base model {record.base_model!r}; this server serves {base!r}",
                param="model",
                code="model_mismatch",
            )
        try:
            adapter = await self.engine.cache.get(record.id, record.load)
        except (AdapterFormatError, StoreError, NotFoundError) as exc:
            logger.error("adapter %s/%s could not be loaded: %s", record.tenant, record.ref, exc)
            raise answers.adapter_unavailable(ref, exc, self._retry_after()) from None
        return Target(f"{record.tenant}/{record.ref}", record.id, adapter, record.n_tokens)

    async def _catalog(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a catalog query off the event loop; an unreachable catalog answers 503, not 500."""
        try:
            return await asyncio.to_thread(fn, *args)
        except CatalogError as exc:
            logger.error("catalog unavailable: %s", exc)
            raise ApiError(
                503,
                "the adapter catalog is unavailable; try again",
                type="server_error",
                headers=self._retry_after(),
            ) from None
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.config.retry_after_s)))}

    def _params(self, body: Any, chat: bool, input_tokens: int) -> SamplingParams:
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
                max_tokens, body.temperature, body.top_p, body.seed, body.stops, ignore_eos=body.ignore_eos
            )
        except UlptError as exc:
            raise ApiError(400, str(exc)) from None

    def _count_tokens(self, text: str, adapter_tokens: int, chat: bool) -> int:
        """Tokens of one input; one far beyond what the server accepts is refused before it costs memory."""
        most = self.config.max_prompt_tokens
        if self.max_positions is not None:
            most = min(most, self.max_positions - 1)
        count = self.engine.count_tokens(text, most - adapter_tokens)
        if count is None:
            raise ApiError(
                400,
                f"the input is longer than the {most} tokens this server accepts (with the adapter's prompt)",
                param="messages" if chat else "prompt",
            )
        return count

    def _chat_text(self, body: ChatCompletionRequest) -> str:
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in body.messages
        ]
        tokenizer = self.engine.model.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            # A model without a chat template (tiny test models): a plain transcript.
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        try:
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as exc:  # jinja raises its own errors for conversations the template refuses
            raise ApiError(
                400, f"messages: the model's chat template refused them: {exc}", param="messages"
            ) from None

    def _list_models(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        base = self.config.base_model_name
        data: list[dict[str, Any]] = []
        if after is None:
            data.append({"id": base, "object": "model", "created": 0, "owned_by": "ulpt"})
            for alias, record in self.registry.list_aliases(tenant=tenant):
                if record.base_model == base:
                    data.append(_model_entry(alias, record, alias_of=record.ref))
        page = self.registry.for_tenant(tenant).find(
            base_model=base, include_public=True, order_by="name", limit=limit, cursor=after
        )
        for record in page:
            ref = record.ref if record.tenant == tenant else f"{record.tenant}/{record.ref}"
            data.append(_model_entry(ref, record))
        return {
            "object": "list",
            "data": data,
            "has_more": page.next_cursor is not None,
            "next_cursor": page.next_cursor,
        }


def build_application(config: ServeConfig, deps: Dependencies | None = None) -> Application:
    """The Serve application for `config`; `deps` swaps in a model or a catalog (tests)."""
    # num_replicas only when asked for: 1 is Serve's default, and an explicit value would clash with
    # an autoscaling_config that a Serve config file (deploy/serve/serve-config.yaml) adds.
    replicas = {"num_replicas": config.num_replicas} if config.num_replicas != 1 else {}
    return ULPTServer.options(  # type: ignore[attr-defined]
        name=config.app_name,
        **replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.retry_after_s),
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    ).bind(config, deps or Dependencies())


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run ulpt_serving.app:build_app key=value ...` and a RayService."""
    return build_application(ServeConfig.from_dict(args))
