"""One copy of a frozen base model per node: its weights in Ray's object store, read-only everywhere.

Every Ray Train worker and Serve replica used to load its own copy of the base model from disk: N
processes on a node cost N copies of the weights and N disk reads. Here the weights are packed once,
in the dtype the processes will run, into one byte buffer that is `ray.put` into the object store
(with the config and tokenizer files beside it). A process builds the model's skeleton without
allocating weights and points every parameter at the buffer: on the CPU the tensors are zero-copy
views of the node's shared memory; on a GPU each is copied once from there to the device, with no
host copy in between.

The frozen base is shared by every process on the node, so a stray in-place write would silently
change every worker's model. The pages holding the weights are therefore mapped read-only in each
process that uses them (`mprotect`): such a write crashes that process (SIGSEGV) instead of
corrupting the others. The buffer carries a page of padding at each end so that the protected pages
hold nothing but this object's weights.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ulpt.models.base import BaseModel
from ulpt.models.fingerprint import weights_fingerprint
from ulpt.models.loading import auto_model_class, wrap_base_model
from ulpt.models.precision import resolve_device, resolve_dtype
from ulpt.models.registry import resolve_model_path

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
ALIGN = 64
"""Byte alignment of each tensor in the buffer (what vectorized kernels like)."""
_PROT_READ, _PROT_WRITE = 1, 2


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class SharedBase:
    """A base model as one object-store value: a byte buffer of weights plus the small files.

    Ray stores `buffer` out of band, so `ray.get` returns it as a view of the node's shared memory.
    """

    name: str
    fingerprint: str
    dtype: str
    files: dict[str, bytes]
    """config, generation config and tokenizer files, by file name"""
    tensors: tuple[TensorEntry, ...]
    buffer: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def pack_base_model(path_or_id: str | os.PathLike[str], dtype: str | torch.dtype = "float32") -> SharedBase:
    """Read a model folder's safetensors into one buffer, floating-point tensors cast to `dtype`."""
    name = str(path_or_id)
    folder, files, target = _weight_files(name, dtype)
    layout, tensors, size = _layout(folder, files, target)
    buffer = np.zeros(size, dtype=np.uint8)
    by_file: dict[Path, list[int]] = {}
    for i, (file, *_rest) in enumerate(layout):
        by_file.setdefault(file, []).append(i)
    for file, indices in by_file.items():
        with safe_open(str(file), framework="pt") as handle:
            for i in indices:
                entry = tensors[i]
                value = handle.get_tensor(entry.name).to(layout[i][2]).contiguous()
                view = buffer[entry.offset : entry.offset + entry.nbytes]
                view[:] = value.reshape(-1).view(torch.uint8).numpy()
    small = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix != ".safetensors"}
    fingerprint = weights_fingerprint(files)
    return SharedBase(name, fingerprint, str(target).removeprefix("torch."), small, tuple(tensors), buffer)


def packed_nbytes(path_or_id: str | os.PathLike[str], dtype: str | torch.dtype = "float32") -> int:
    """The size `pack_base_model` would allocate, read from the safetensors headers alone."""
    folder, files, target = _weight_files(str(path_or_id), dtype)
    return _layout(folder, files, target)[2]


def _weight_files(name: str, dtype: str | torch.dtype) -> tuple[Path, list[Path], torch.dtype]:
    folder = resolve_model_path(name)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{name}: no *.safetensors weights in {folder}")
    return folder, files, resolve_dtype(dtype, torch.device("cpu"))


def _layout(
    folder: Path, files: list[Path], target: torch.dtype
) -> tuple[list[tuple[Path, str, torch.dtype, tuple[int, ...]]], list[TensorEntry], int]:
    """(each tensor's file, name, packed dtype and shape; its place in the buffer; the buffer's size),
    from the files' headers: nothing is read or allocated."""
    kept = kept_in_float32(folder, target)
    layout: list[tuple[Path, str, torch.dtype, tuple[int, ...]]] = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  # safe_open is not a mapping
                sliced = handle.get_slice(key)
                stored = _torch_dtype(sliced.get_dtype())
                kind = target if stored.is_floating_point else stored
                if stored.is_floating_point and kept.intersection(key.split(".")):
                    kind = torch.float32
                layout.append((file, key, kind, tuple(sliced.get_shape())))
    tensors, offset = [], PAGE
    for _, key, kind, shape in layout:
        nbytes = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        tensors.append(TensorEntry(key, str(kind).removeprefix("torch."), shape, offset, nbytes))
        offset = -(-(offset + nbytes) // ALIGN) * ALIGN
    return layout, tensors, offset + PAGE


def kept_in_float32(folder: Path, dtype: torch.dtype) -> set[str]:
    """Module names the model's class keeps in float32 when loaded in `dtype`, as `from_pretrained`
    does (T5's `wo` in float16: its activations overflow there); the shared copy must match a disk load."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model_class = auto_model_class(config)._model_mapping[type(config)]  # e.g. T5ForConditionalGeneration
    kept = set(getattr(model_class, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        kept |= set(getattr(model_class, "_keep_in_fp32_modules", None) or ())
    return kept if dtype in (torch.float16, torch.bfloat16) else set()


def put_base_model(
    path_or_id: str | os.PathLike[str], dtype: str | torch.dtype = "float32", free_bytes: float | None = None
) -> Any | None:
    """`ray.put` the packed model once; None (and one log line) when the object store cannot hold it.

    The size is read from the safetensors headers first, so a model too large for the store is never
    packed (packing holds the whole model in the caller's memory: a driver on an 8 GiB head pod).
    `free_bytes`: the store's free bytes (default: what Ray reports). The caller keeps the returned
    reference alive for as long as processes use the weights.
    """
    import ray

    nbytes = packed_nbytes(path_or_id, dtype)
    free = ray.available_resources().get("object_store_memory", 0.0) if free_bytes is None else free_bytes
    if nbytes > free:
        log.warning(
            "base model %s (%.2f GB in %s) does not fit in Ray's object store (%.2f GB free): every "
            "process loads it from disk; raise the store with `ray start --object-store-memory`",
            path_or_id, nbytes / 1e9, str(dtype).removeprefix("torch."), free / 1e9,
        )  # fmt: skip
        return None
    return ray.put(pack_base_model(path_or_id, dtype))


def load_shared_base_model(
    shared: SharedBase | Any,
    *,
    device: str | torch.device = "cpu",
    pad_multiple: int = 8,
) -> BaseModel:
    """The base model on `device` with its weights taken from `shared` (a SharedBase or an ObjectRef).

    On the CPU every parameter is a read-only view of the shared buffer; on another device it is one
    copy from it. Results equal a model loaded from disk in the same dtype.
    """
    if not isinstance(shared, SharedBase):
        import ray

        shared = ray.get(shared)
    device = resolve_device(device)
    dtype = getattr(torch, shared.dtype)
    on_host = device.type == "cpu"
    if on_host:
        _protect(shared.buffer)
    with tempfile.TemporaryDirectory(prefix="ulpt-base-") as tmp:
        for file_name, data in shared.files.items():
            (Path(tmp) / file_name).write_bytes(data)
        hf_model, tokenizer = _skeleton(Path(tmp), dtype)
    with warnings.catch_warnings():  # read-only by design; mprotect, not numpy's flag, enforces it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        # One storage over the whole buffer and every weight a view of it: the storage keeps this very
        # array alive (a numpy slice would reference the memory's owner instead), so the pages stay
        # read-only exactly as long as some weight uses them.
        whole = torch.from_numpy(shared.buffer)
    state = {}
    for entry in shared.tensors:
        tensor = whole[entry.offset : entry.offset + entry.nbytes].view(getattr(torch, entry.dtype))
        tensor = tensor.view(entry.shape)
        state[entry.name] = tensor if on_host else tensor.to(device)
    del whole
    hf_model.load_state_dict(state, strict=False, assign=True)
    hf_model.tie_weights()
    unset = [n for n, p in hf_model.named_parameters() if p.is_meta]
    if unset:
        raise ValueError(f"{shared.name}: the shared weights lack {', '.join(unset[:5])}")
    hf_model.to(device)  # the skeleton's buffers (e.g. rotary frequencies); weights are already there
    model = wrap_base_model(
        hf_model, tokenizer, name=shared.name, pad_multiple=pad_multiple, fingerprint=shared.fingerprint
    )
    model.shared_weights = on_host
    return model


def _skeleton(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model's modules with parameters on the meta device (no memory), plus its tokenizer."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoTokenizer
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    # Buffers (rotary frequencies) are computed for real; parameters stay on meta and skip their
    # random initialization, which would be thrown away.
    with init_empty_weights(include_buffers=False), no_init_weights():
        hf_model = auto_model_class(config).from_config(config, dtype=dtype)
    return hf_model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _torch_dtype(name: str) -> torch.dtype:
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}
    names |= {"I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
    return getattr(torch, names[name])


def _protect(buffer: np.ndarray) -> None:
    """Map the pages that hold only this buffer's weights read-only until the buffer is released."""
    mprotect = _libc_mprotect()
    if mprotect is None:
        return
    start = (buffer.ctypes.data + PAGE) // PAGE * PAGE
    end = -(-(buffer.ctypes.data + buffer.nbytes - PAGE) // PAGE) * PAGE
    if end <= start or mprotect(start, end - start, _PROT_READ) != 0:
        log.warning("could not map the shared base model read-only (errno %d)", ctypes.get_errno())
        return
    # Before the memory goes back to Ray or the allocator it must be writable again.
    weakref.finalize(buffer, mprotect, start, end - start, _PROT_READ | _PROT_WRITE)


def _libc_mprotect() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.mprotect
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function
