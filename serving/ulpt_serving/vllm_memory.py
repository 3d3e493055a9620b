"""How much memory a replica's vLLM engine claims: derived from what the replica needs, checked first.

vLLM sizes its key/value cache from `gpu_memory_utilization`, the share of the device's memory it
claims at start, and refuses to start when that much is not free. A fixed 0.9 lets one replica per
GPU start and the second fail; on vLLM's CPU build the same share is of the machine's RAM, so a
replica failed wherever more than 10% of it was in use, and the user saw only "Engine core
initialization failed. See root cause above." (the cause being in the engine process's log).

So: on a GPU the share is 0.9 of the replica's own `num_gpus` (two replicas at 0.5 each claim 0.45);
on a CPU the key/value cache gets an explicit size (what `max_batch_size` rows of the longest
context need, capped) and no share of RAM is demanded. Before vLLM starts, `check_free_memory` says
in one line when the memory is not there.
"""

from __future__ import annotations

from typing import Any

import psutil
import torch

from ulpt.errors import UlptError
from ulpt.models import BaseModel
from ulpt_serving.config import ServeConfig

GIB = 1 << 30
GPU_HEADROOM = 0.9
"""Share of a replica's GPU share vLLM takes (weights, activations, key/value cache); the rest is the
CUDA context's and the allocator's."""
CPU_KV_CACHE_CAP = 4 * GIB
"""Largest key/value cache sized on the CPU without being asked (vLLM's CPU build's old default)."""


def gpu_memory_utilization(config: ServeConfig) -> float:
    """The share of its GPU the replica's vLLM claims: the configured one, else 0.9 of `num_gpus`."""
    if config.vllm_gpu_memory_utilization is not None:
        return config.vllm_gpu_memory_utilization
    return round(GPU_HEADROOM * min(config.num_gpus or 1.0, 1.0), 4)


def kv_bytes_per_token(hf_config: Any, dtype: torch.dtype) -> int:
    """Keys and values of one token at every layer: 2 * layers * kv heads * head dim * dtype size."""
    text = getattr(hf_config, "text_config", None) or hf_config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * dtype.itemsize


def cpu_kv_cache_bytes(config: ServeConfig, model: BaseModel, max_model_len: int) -> int:
    """The key/value cache of a vLLM engine on a CPU: the configured GiB, else `max_batch_size` rows of
    `max_model_len` tokens, capped at 4 GiB but never below one full-length row."""
    if config.vllm_cpu_kv_cache_gib is not None:
        return int(config.vllm_cpu_kv_cache_gib * GIB)
    per_token = kv_bytes_per_token(model.config, model.token_embeddings.dtype)
    one_row = per_token * max_model_len
    return max(min(one_row * config.max_batch_size, CPU_KV_CACHE_CAP), one_row)


def weight_bytes(model: BaseModel) -> int:
    """Bytes of the base model's weights in the dtype vLLM loads them in (the dtype ulpt loaded)."""
    return sum(p.numel() for p in model.hf.parameters()) * model.token_embeddings.dtype.itemsize


def check_free_memory(on_cpu: bool, needed_bytes: int, share: float) -> None:
    """A one-line error before vLLM starts when the memory it will claim is not free.

    On a CPU: the weights and key/value cache against the machine's available RAM. On a GPU: `share`
    of the device against what is free on it (another process or replica may hold the rest).
    """
    if on_cpu:
        available = psutil.virtual_memory().available
        if needed_bytes > available:
            raise UlptError(
                f"vLLM needs {needed_bytes / GIB:.1f} GiB of RAM for the weights and key/value cache, "
                f"{available / GIB:.1f} GiB are available: lower max_batch_size or vllm_cpu_kv_cache_gib"
            )
        return
    free, total = torch.cuda.mem_get_info()
    if share * total > free:
        raise UlptError(
            f"vLLM would claim {share:g} of the GPU ({share * total / GIB:.1f} GiB), {free / GIB:.1f} GiB "
            f"are free (another process or replica holds the rest): lower vllm_gpu_memory_utilization "
            "(ulpt serve --vllm-gpu-memory-share) or num_gpus"
        )


def engine_on_cpu() -> bool:
    """Whether vLLM itself runs on a CPU (its CPU build, or no GPU visible to this replica)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu()) or not torch.cuda.is_available()
