"""The vLLM engine of a replica: continuous batching of rows of many adapters through prompt embeddings.

vLLM's `AsyncLLM` runs inside the replica (its engine core in a child process). For every request the
replica builds the input itself, `adapter prompt ⊕ token embeddings`, from the catalog adapter it
resolved and the base model's own embedding table, and submits it as vLLM's `prompt_embeds`; a request
for the bare base model goes in as token ids. vLLM schedules every step over whatever requests are in
flight (iteration-level batching, paged key/value cache, chunked prefill), so a row that ends leaves
at once and an arriving one joins the next step. Clients never send embeddings: the HTTP protocol has
no such field (see `protocol`), and vLLM's own server, which deserializes client tensors, is not used.

Why `AsyncLLM` and not Ray Serve LLM's deployment: `ray[llm]` pins the CUDA `vllm` 0.29 (it cannot sit
next to vLLM's CPU build) and its OpenAI front end would take `prompt_embeds` from clients; here the
replica keeps ulpt's own API (admission, tenancy, adapters, errors, usage) and only decoding moves.

vLLM decodes token ids (`detokenize=False`); the replica turns them into text exactly as with its own
engine (`engine.TextStream`: stop strings, held-back partial characters, finish reasons), so answers
are the same whichever engine decodes. A row whose reader leaves is aborted in vLLM at its next token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Literal

import torch
from transformers import AutoConfig

from ulpt.errors import UlptError, first_line
from ulpt.models import BaseModel, SamplingParams
from ulpt.models.loading import is_encoder_decoder
from ulpt.models.prefix import CachedPrompt
from ulpt.models.registry import resolve_model_path
from ulpt_serving.cache import AdapterCache, CompactAdapter, HotPrompt
from ulpt_serving.config import ServeConfig
from ulpt_serving.engine import BatchItem, Engine, RowControl, RowFailure
from ulpt_serving.metrics import ServingMetrics
from ulpt_serving.vllm_memory import (
    check_free_memory,
    cpu_kv_cache_bytes,
    engine_on_cpu,
    gpu_memory_utilization,
    weight_bytes,
)

logger = logging.getLogger("ray.serve").getChild("ulpt")

VllmDtype = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: dict[torch.dtype, VllmDtype] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}
"""vLLM's names of the dtypes ulpt loads a base model in (its engine arguments take these literals)."""


def vllm_installed() -> bool:
    """Whether the `vllm` extra is installed (vLLM's CPU or CUDA build)."""
    return importlib.util.find_spec("vllm") is not None


def may_use_vllm(config: ServeConfig) -> bool:
    """Whether `config` may pick vLLM, before any model is loaded: the replica then keeps ulpt's copy of
    the base model (tokenizer, embedding table) on the CPU and leaves the GPU to vLLM."""
    if config.engine == "native" or not vllm_installed():
        return False
    if config.engine == "vllm":
        return True
    try:
        folder = resolve_model_path(config.model)
        return not is_encoder_decoder(AutoConfig.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError):
        return False  # loading the model reports it


def engine_kind(config: ServeConfig, model: BaseModel) -> str:
    """`vllm` or `native`: what `config.engine` asks for, `auto` meaning vLLM for a decoder-only model
    when it is installed. Asking for vLLM where it cannot run is a clear error, not a silent fallback."""
    if config.engine == "native":
        return "native"
    if config.engine == "auto":
        return "vllm" if vllm_installed() and not model.is_encoder_decoder else "native"
    if model.is_encoder_decoder:
        raise ValueError(f"engine vllm serves decoder-only models; {config.model} is encoder-decoder")
    if not vllm_installed():
        raise ValueError("engine vllm needs the vllm extra: pip install 'ulpt[vllm]' (see README)")
    return "vllm"


def vllm_sampling(params: SamplingParams, eos_ids: Iterable[int]) -> Any:
    """vLLM's sampling parameters for one row: the same choices as ulpt's `RowSampler` (greedy below
    `GREEDY_BELOW`, nucleus sampling, a per-request seed), EOS as ulpt's model sees it, token ids only."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    greedy = params.greedy
    return VllmSamplingParams(
        max_tokens=params.max_new_tokens,
        temperature=0.0 if greedy else params.temperature,
        top_p=1.0 if greedy else params.top_p,
        seed=None if greedy else params.seed,
        ignore_eos=params.ignore_eos,
        stop_token_ids=[] if params.ignore_eos else sorted(eos_ids),
        detokenize=False,
        output_kind=RequestOutputKind.DELTA,
    )


def engine_args(config: ServeConfig, model: BaseModel, on_cpu: bool | None = None) -> Any:
    """vLLM's engine arguments for the replica's base model folder, in the dtype ulpt loaded it in.

    `on_cpu`: whether vLLM itself runs on a CPU (default: asks vLLM's platform). ulpt's own copy of
    the model (tokenizer, embedding table) is on the CPU either way, so it cannot tell.
    """
    from vllm import AsyncEngineArgs

    on_cpu = engine_on_cpu() if on_cpu is None else on_cpu
    positions = getattr(model.config, "max_position_embeddings", None) or config.max_prompt_tokens
    max_model_len = min(int(positions), config.max_prompt_tokens + config.max_tokens_limit)
    return AsyncEngineArgs(
        model=str(resolve_model_path(config.model)),
        dtype=DTYPE_NAMES[model.token_embeddings.dtype],
        enable_prompt_embeds=True,
        skip_tokenizer_init=True,
        max_model_len=max_model_len,
        max_num_seqs=config.max_batch_size,
        # Eager only where vLLM runs on a CPU (torch.compile costs minutes at every start there, its
        # cache did not reload); on a GPU, CUDA graphs and compilation are what make decoding fast.
        enforce_eager=on_cpu,
        enable_prefix_caching=config.prefix_cache,
        seed=0,
        gpu_memory_utilization=gpu_memory_utilization(config),
        # On a CPU an explicit key/value cache size: vLLM then demands no share of the machine's RAM free
        kv_cache_memory_bytes=cpu_kv_cache_bytes(config, model, max_model_len) if on_cpu else None,
        disable_log_stats=True,
    )


class VllmEngine(Engine):
    """The base model (tokenizer, embedding table), the adapter cache and vLLM's async engine.

    The hot tier holds materialized prompts only: vLLM keeps key/values itself (its prefix cache keys
    on the input, so it reuses an adapter's prompt positions only for requests that start with the
    same embeddings; see docs/serving.md).
    """

    ABANDON_POLL_S = 0.05
    """How often in-flight rows are checked for a reader that left (one task for all of them)."""

    def __init__(self, model: BaseModel, cache: AdapterCache, llm: Any) -> None:
        super().__init__(model, cache)
        self.llm = llm
        self.in_flight: dict[str, RowControl] = {}
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def create(cls, model: BaseModel, config: ServeConfig | None = None) -> VllmEngine:
        from vllm.v1.engine.async_llm import AsyncLLM

        config = config or ServeConfig()
        # vLLM reads these from the environment (its engine core process inherits the replica's).
        if config.vllm_cache_root:
            os.environ["VLLM_CACHE_ROOT"] = config.vllm_cache_root
        dtype = model.token_embeddings.dtype
        on_cpu = engine_on_cpu()
        args = engine_args(config, model, on_cpu)
        needed = weight_bytes(model) + (args.kv_cache_memory_bytes or 0)
        check_free_memory(on_cpu, needed, args.gpu_memory_utilization)

        def prepare(adapters: Sequence[CompactAdapter]) -> list[HotPrompt]:
            return [a.materialize().to(dtype) for a in adapters]

        cache = AdapterCache.sized_by(config, prepare)
        try:
            llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:  # vLLM's own message points at its engine process's log
            raise UlptError(
                f"vLLM's engine did not start ({first_line(exc)}); the cause is the error logged just "
                "before it by vLLM's EngineCore process"
            ) from exc
        return cls(model, cache, llm)

    def engine_input(self, item: BatchItem, prompt: HotPrompt | None) -> dict[str, Any]:
        """What vLLM decodes for a row: token ids for the bare model, else the prompt ⊕ token embeddings
        on the CPU in the base model's dtype (vLLM moves them to its device)."""
        ids = list(item.token_ids) if item.token_ids is not None else self.model.encode(item.text)
        if prompt is None:
            return {"prompt_token_ids": ids}
        embeds = prompt.prompt if isinstance(prompt, CachedPrompt) else prompt
        table = self.model.token_embeddings
        with torch.no_grad():
            tokens = table[torch.tensor(ids, dtype=torch.long, device=table.device)]
            x = torch.cat([embeds.to(device=table.device, dtype=table.dtype), tokens])
        return {"prompt_embeds": x.detach().to("cpu").contiguous()}

    async def tokens(self, item: BatchItem, prompt: HotPrompt | None) -> AsyncIterator[int]:
        """The row's token ids as vLLM decodes them; leaving early (or `abandon`) aborts it in vLLM."""
        params = item.params
        if params.max_new_tokens == 0:
            return
        request_id = uuid.uuid4().hex
        stream = self.llm.generate(
            self.engine_input(item, prompt), vllm_sampling(params, self.model.eos_ids), request_id
        )
        self.in_flight[request_id] = item.control
        self._watch()
        try:
            async for output in stream:
                for token in output.outputs[0].token_ids:
                    yield int(token)
                if item.control.abandoned.is_set():
                    break
        finally:
            self.in_flight.pop(request_id, None)
            await stream.aclose()  # vLLM aborts a request whose generator closes before it finished

    def _watch(self) -> None:
        """Abort rows whose reader left even while nothing reads their stream (a reader that stops
        iterating does not close it at once), and release them so their log line is written."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._abort_abandoned())

    async def _abort_abandoned(self) -> None:
        while self.in_flight:
            left = [rid for rid, control in self.in_flight.items() if control.abandoned.is_set()]
            if left:
                await self.llm.abort(left)
                for rid in left:
                    control = self.in_flight.pop(rid, None)
                    if control is not None:
                        control.release()
            await asyncio.sleep(self.ABANDON_POLL_S)

    def shutdown(self) -> None:
        self.llm.shutdown()


class VllmDecodeLoop:
    """`DecodeLoop`'s interface over vLLM: each row streams on its own, vLLM batches them per step."""

    def __init__(self, engine: VllmEngine, metrics: ServingMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """vLLM schedules rows at every step; its batch limit is set at start (`max_batch_size`)."""

    async def rows(self, item: BatchItem) -> AsyncIterator[int | RowFailure]:
        """The row's tokens, or one `RowFailure` for a row that could not be decoded."""
        control = item.control
        control.joined = True
        try:
            try:  # a cold adapter's prompt is one small matmul: built here, not on a thread
                adapter = item.adapter
                source = (item.adapter_key, adapter) if item.adapter_key and adapter is not None else None
                (prompt,) = self.engine.cache.prompts([source])
            except Exception as exc:
                yield RowFailure(exc)
                return
            async for token in self.engine.tokens(item, prompt):
                control.generated += 1
                yield token
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            logger.exception("vLLM request failed")
            yield RowFailure(exc)
        finally:
            control.release()
            self.metrics.cache(self.engine.cache.stats())
