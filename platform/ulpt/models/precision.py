"""Where the frozen base model runs and in which dtype.

The base model is frozen, so it may run in a half-precision dtype (bf16 halves its memory and is the
fast path of current GPUs) while everything that learns stays float32: adapter parameters and their
AdamW state are float32 master weights, prompts are cast to the base's dtype only where they meet
the token embeddings, and log-probabilities and losses are computed in float32. A half-precision
parameter would lose small AdamW updates to rounding; a float32 loss keeps sums over many target
tokens exact enough to compare fits.

`"auto"` picks bf16 on a CUDA device that supports it and float32 everywhere else, so CPU results
do not change with the default.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field

from ulpt.errors import SpecError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""The dtypes a base model may run in, by the names a spec or a flag uses."""
DTYPE_CHOICES = ("auto", *DTYPES)


def check_dtype_name(name: str, value: object) -> str:
    """`value` is "auto" or a key of DTYPES, else a SpecError naming the field."""
    if not isinstance(value, str) or value not in DTYPE_CHOICES:
        raise SpecError(f"{name} must be one of {', '.join(DTYPE_CHOICES)}, got {value!r}")
    return value


DtypeName = Annotated[
    str,
    AfterValidator(lambda value: check_dtype_name("dtype", value)),
    Field(json_schema_extra={"enum": list(DTYPE_CHOICES)}),
]
"""A spec's `dtype` field: one of DTYPE_CHOICES, refused by name otherwise."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A torch device; "auto" is the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SpecError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The base model's dtype on `device`; "auto" is bf16 on a CUDA device that has it, else float32."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SpecError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    check_dtype_name("dtype", dtype)
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def planned_dtype(dtype: str, use_gpu: bool) -> str:
    """The dtype a job's workers run, decided where no GPU may be (the submitting machine, the driver):
    auto is bfloat16 on GPUs and float32 on CPUs, as `resolve_dtype` gives on a GPU that has bf16."""
    check_dtype_name("dtype", dtype)
    return dtype if dtype != "auto" else ("bfloat16" if use_gpu else "float32")
