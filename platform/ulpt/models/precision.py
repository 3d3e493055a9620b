"""Where the frozen base model runs and in which dtype.

The base model is frozen, so it may run in a half-precision dtype (bf16 halves its memory and is the
fast path of current GPUs) while everything that learns stays float32: adapter parameters and their
AdamW state are float32 master weights, prompts are cast to the base's dtype only where they meet
the token embeddings, and log-probabilities and losses are computed in float32. A half-precision
parameter would lose small AdamW updates to rounding; a float32 loss keeps sums over many target
tokens exact enough to compare fits.

`"auto"` picks bf16 on a CUDA device that runs it natively (not emulated, as on T4 and V100) and
float32 everywhere else, so CPU results do not change with the default. Training refuses float16: it
would need loss scaling, which ulpt has not.
"""

from __future__ import annotations

import os
from typing import Annotated

import torch
from pydantic import AfterValidator, Field

from ulpt.errors import SpecError, UlptError

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


TRAIN_DTYPE_CHOICES = ("auto", "float32", "bfloat16")
"""What a training job's base model may run in: float16 would need loss scaling, which ulpt has not
(small gradients underflow to zero in float16 and those fits silently stop learning)."""


def check_train_dtype_name(name: str, value: object) -> str:
    """A base model dtype a training job may use: `check_dtype_name`, float16 refused in one line."""
    if value == "float16":
        raise SpecError(
            f"{name} float16 cannot train: without loss scaling small gradients underflow to zero; "
            "use bfloat16, or float32 on a GPU without bfloat16"
        )
    if not isinstance(value, str) or value not in TRAIN_DTYPE_CHOICES:
        raise SpecError(f"{name} must be one of {', '.join(TRAIN_DTYPE_CHOICES)}, got {value!r}")
    return value


TrainDtypeName = Annotated[
    str,
    AfterValidator(lambda value: check_train_dtype_name("dtype", value)),
    Field(json_schema_extra={"enum": list(TRAIN_DTYPE_CHOICES)}),
]
"""A training job's `dtype` field: one of TRAIN_DTYPE_CHOICES."""


def check_trainable(dtype: torch.dtype) -> None:
    """Refuse to train adapters through a float16 base (see TRAIN_DTYPE_CHOICES)."""
    if dtype == torch.float16:
        check_train_dtype_name("dtype", "float16")


def bf16_native(device: torch.device) -> bool:
    """Whether `device`'s hardware runs bfloat16 natively; emulated bf16 (T4, V100) is slower than
    float32, so "auto" does not pick it there."""
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch from before the argument, when the answer left emulation out
        return bool(torch.cuda.is_bf16_supported())


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


def require_cuda(device: torch.device, asked_by: str) -> torch.device:
    """`device` when it is a usable CUDA device, else a one-line error naming what asked for a GPU.

    A job with `use_gpu: true` or a replica with `num_gpus` > 0 that lands where CUDA is unavailable (a
    driver too old for the image's CUDA build, a mis-scheduled pod) must stop: on the CPU it would
    train or serve in float32 at a fraction of the speed and still report success.
    """
    if device.type == "cuda" and torch.cuda.is_available():
        return device
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise UlptError(
        f"{asked_by} asks for a GPU, but this process has no usable CUDA device "
        f"(torch {torch.__version__}, {build}, {torch.cuda.device_count()} device(s) visible"
        + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
        + "): check the node's NVIDIA driver and the pod's GPU request"
    )


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The base model's dtype on `device`; "auto" is bf16 on a CUDA device that has it, else float32."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SpecError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    check_dtype_name("dtype", dtype)
    if dtype != "auto":
        return DTYPES[dtype]
    if bf16_native(device):
        return torch.bfloat16
    return torch.float32


def planned_dtype(dtype: str, use_gpu: bool) -> str:
    """The dtype a job's workers run, decided where no GPU may be (the submitting machine, the driver):
    auto is bfloat16 on GPUs and float32 on CPUs, as `resolve_dtype` gives on a GPU that has bf16."""
    check_dtype_name("dtype", dtype)
    return dtype if dtype != "auto" else ("bfloat16" if use_gpu else "float32")
