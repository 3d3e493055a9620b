"""Loading a base model: the transformers class for its config and the ulpt class for its family."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from ulpt.errors import ModelNotFoundError
from ulpt.models.base import BaseModel
from ulpt.models.causal import CausalModel
from ulpt.models.precision import resolve_device, resolve_dtype
from ulpt.models.seq2seq import Seq2SeqModel


def is_encoder_decoder(config: Any) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def auto_model_class(config: Any) -> Any:
    """AutoModelForSeq2SeqLM for encoder-decoder configs (T5), AutoModelForCausalLM otherwise."""
    return AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM


def wrap_base_model(hf_model: Any, tokenizer: Any, **kwargs: Any) -> BaseModel:
    """The ulpt model of the transformers model's family (keyword arguments as `BaseModel`'s)."""
    family: type[BaseModel] = Seq2SeqModel if is_encoder_decoder(hf_model.config) else CausalModel
    return family(hf_model, tokenizer, **kwargs)


def load_base_model(
    path_or_id: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    pad_multiple: int = 8,
    embeddings_only: bool = False,
) -> BaseModel:
    """Load any `from_pretrained` folder (or a named model such as 'smollm2-135m'), frozen.

    `embeddings_only`: a decoder-only model without its transformer layers (embedding table, final
    norm, LM head), for a replica whose vLLM holds the real weights on the GPU and only needs the
    tokenizer and the table here: a few percent of the host memory of a full copy.

    Decoder-only models load as `AutoModelForCausalLM`, encoder-decoder ones (T5) as
    `AutoModelForSeq2SeqLM` with the prompt on the encoder side. `dtype` is "auto" (bf16 on CUDA,
    float32 on CPU), "float32", "bfloat16", "float16" or a torch dtype; `device` is "auto" (CUDA when
    present), "cpu", "cuda[:N]" or a torch device. Adapters stay float32 whatever the base runs in
    (see `ulpt.models.precision`).
    """
    from ulpt.models.registry import resolve_model_path

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    name = str(path_or_id)
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{name}: not a loadable model folder ({exc})") from None
    auto = auto_model_class(config)
    # device_map places each tensor on `device` in `dtype` as it is read from the (memory-mapped)
    # safetensors file: no float32 host copy of the whole model first, so a GPU pod needs host
    # memory for about one shard, not for the model twice.
    layers = {"num_hidden_layers": 0} if embeddings_only and not is_encoder_decoder(config) else {}
    hf_model = auto.from_pretrained(
        path, dtype=dtype, device_map={"": device}, local_files_only=True, **layers
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return wrap_base_model(hf_model, tokenizer, name=name, path=Path(path), pad_multiple=pad_multiple)
