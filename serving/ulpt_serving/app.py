"""The Ray Serve application: an OpenAI-compatible FastAPI ingress whose batches mix adapters.

    serve run ulpt_serving.app:build_app model=smollm2-135m port=8000      # or `ulpt serve`

One deployment does both jobs, so a request costs one hop: its handlers authenticate, resolve the
`model` reference in the catalog, load the adapter into the replica's cache (single flight) and
validate everything; only then does the request join the replica's decode loop, whose batches mix
rows of many adapters. Errors end as OpenAI error bodies with a status (400/401/404/429/500/503),
never as a dead replica.

This module holds the routes and builds a replica from its parts: `admission` (caller, body size,
limits), `resolve` (model reference -> adapter, the model list), `generation` (the request path and
its event stream), `decodeloop` (the `@serve.batch` loop), `responses` (bodies from `openapi`'s
models), `answers` (which failure gets which status), `chat_template` and `requestlog`.
"""

# No `from __future__ import annotations` here: FastAPI reads handler annotations at runtime, and the
# class Ray ships to replicas carries no module globals to resolve string annotations against.
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException

from ulpt.models import BaseModel, load_base_model
from ulpt.models.precision import require_cuda, resolve_dtype
from ulpt.registry import Registry
from ulpt_serving import answers, openapi, responses
from ulpt_serving.admission import Admission
from ulpt_serving.config import ServeConfig
from ulpt_serving.decodeloop import DecodeLoop
from ulpt_serving.engine import Engine
from ulpt_serving.generation import Generation
from ulpt_serving.metrics import ServingMetrics
from ulpt_serving.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from ulpt_serving.requestlog import RequestInfo, RequestLog
from ulpt_serving.resolve import AdapterResolution, default_registry
from ulpt_serving.tenancy import Authenticator
from ulpt_serving.vllm_engine import DTYPE_NAMES, VllmDecodeLoop, VllmEngine, engine_kind, may_use_vllm
from ulpt_serving.weights import shared_base_model

# Everything the deployment class uses is defined above it: serve.ingress wraps the class in a new
# one that Ray pickles by value when it is decorated, capturing only the globals that exist by then.

MAX_MODELS_LISTED = 1000

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
    """Default: `resolve.default_registry`, the catalog + store of `config.home` / `catalog_url` /
    `store_url` (as `ulpt.Client`)."""


def default_model(config: ServeConfig) -> BaseModel:
    """The base model in `config.dtype`, on a GPU when the replica reserves one (an error without CUDA);
    built on the node's shared copy of the weights unless `share_weights` is off.

    When vLLM may decode on the GPU, it holds the weights there itself: ulpt's copy stays on the CPU
    without its transformer layers (tokenizer, embedding table: all the replica uses), in the dtype
    ulpt would have picked for that GPU (vLLM runs in it)."""
    gpu = config.num_gpus > 0
    if gpu:  # a replica that reserved a GPU and has none fails here instead of serving on the CPU
        require_cuda(torch.device("cuda"), f"num_gpus={config.num_gpus:g}")
    if gpu and may_use_vllm(config):
        vllm_dtype = DTYPE_NAMES[resolve_dtype(config.dtype, torch.device("cuda"))]
        return load_base_model(config.model, device="cpu", dtype=vllm_dtype, embeddings_only=True)
    device = torch.device("cuda" if gpu else "cpu")
    if config.share_weights:
        return shared_base_model(config.model, config.dtype, device)
    return load_base_model(config.model, device=device, dtype=config.dtype)


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return responses.error_response(exc)


@api.exception_handler(HTTPException)
async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (an unknown route, a method a route lacks) as OpenAI error bodies."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    headers = dict(exc.headers or {})
    return responses.error_response(ApiError(exc.status_code, str(exc.detail), type=kind, headers=headers))


@api.exception_handler(RequestValidationError)
async def _invalid_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return responses.error_response(answers.invalid_parameter(exc.errors()))


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
        self.engine: Engine
        self.loop: DecodeLoop | VllmDecodeLoop
        self.metrics = ServingMetrics(per_adapter=config.per_adapter_metrics)
        if engine_kind(config, model) == "vllm":
            self.engine = vllm_engine = VllmEngine.create(model, config)
            self.loop = VllmDecodeLoop(vllm_engine, self.metrics)
        else:
            self.engine = Engine.create(model, config)
            self.loop = DecodeLoop(self.engine, self.metrics)
        registry = (deps.registry_factory or partial(default_registry, config))()
        self.requests = RequestLog(self.metrics, config.log_requests)
        self.admission = Admission(config, Authenticator(registry, config.auth_cache_ttl_s), self.engine)
        self.adapters = AdapterResolution(config, registry, self.engine)
        self.generation = Generation(self.admission, self.adapters, self.loop, self.requests)
        self.configure_batching(config.max_batch_size, config.batch_wait_timeout_s)

    # ---- handle-only methods (tests, benchmarks, operators) -------------------------------------

    def configure_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Change how batches form without a redeploy."""
        self.loop.configure(max_batch_size, batch_wait_timeout_s)

    def stats(self) -> dict[str, Any]:
        """Per-adapter counts, recent batch compositions and cache state of this replica."""
        summary = self.metrics.summary(self.engine.cache.stats())
        return {**summary, "base_weights": "shared" if self.engine.model.shared_weights else "private"}

    # ---- HTTP --------------------------------------------------------------------------------

    @api.get("/healthz", response_model=openapi.Health)
    async def healthz(self) -> openapi.Health:
        cache = self.engine.cache.stats()
        return openapi.Health(
            status="ok",
            model=self.config.base_model_name,
            family=self.engine.model.family,
            engine="vllm" if isinstance(self.engine, VllmEngine) else "native",
            adapters_cached=cache.compact_count,
            adapters_hot=cache.hot_count,
        )

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
            tenant = await self.admission.tenant(request)
            self.admission.take_slot(tenant)
            try:
                return JSONResponse(await self.adapters.models(tenant, limit, after))
            finally:
                self.admission.slots.release(tenant)
        except ApiError as exc:
            status = exc.status
            return responses.error_response(exc)
        finally:
            self.requests.record(info, status)

    @api.post(
        "/v1/completions",
        response_model=openapi.CompletionResponse,
        responses=openapi.GENERATE_RESPONSES,
        openapi_extra=openapi.json_body(CompletionRequest),
    )
    async def completions(self, request: Request) -> Response:
        return await self.generation.respond(request, chat=False)

    @api.post(
        "/v1/chat/completions",
        response_model=openapi.ChatCompletionResponse,
        responses=openapi.GENERATE_RESPONSES,
        openapi_extra=openapi.json_body(ChatCompletionRequest),
    )
    async def chat_completions(self, request: Request) -> Response:
        return await self.generation.respond(request, chat=True)


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
