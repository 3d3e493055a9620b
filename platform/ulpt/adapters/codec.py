"""The adapter file format, read and written in one place.

On disk an adapter is `adapter.safetensors` + `adapter_config.json` (no pickle anywhere). As a single
blob (for the object store) it is the same safetensors bytes with the config in the header's
metadata, so the catalog can read a blob's config without touching its tensors. Every read goes
through `limits` first: a config is checked against the memory bound, and the safetensors header
against the config, before any tensor is allocated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.numpy import save as save_numpy_bytes
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ulpt.adapters import limits, projection
from ulpt.adapters.spec import AdapterSpec
from ulpt.config import atomic_write_bytes
from ulpt.errors import AdapterFormatError

FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
METADATA_KEY = "adapter_config"
"""The blob's safetensors metadata entry holding the config as JSON."""


def make_config(
    spec: AdapterSpec,
    hidden: int,
    base_model: str | None,
    num_trainable_params: int,
    frozen_fingerprint: str | None,
) -> dict[str, Any]:
    """adapter_config.json: the spec, plus the record that proves the seed regenerates the frozen tensor."""
    record = None
    if frozen_fingerprint is not None:
        record = {
            "distribution": spec.projection,
            "generator": projection.GENERATOR_NAME,
            "generator_version": projection.GENERATOR_VERSION,
            "fingerprint": frozen_fingerprint,
        }
    return {
        "format_version": FORMAT_VERSION,
        **spec.to_dict(),
        "projection": record,
        "hidden_size": hidden,
        "base_model": base_model,
        "num_trainable_params": num_trainable_params,
    }


def check_format_version(config: dict[str, Any]) -> None:
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise AdapterFormatError(
            f"unsupported adapter format_version {version!r} (this ulpt reads {FORMAT_VERSION})"
        )


# ---- blob: one safetensors file carrying its config -------------------------------------------


def to_blob(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> bytes:
    """One self-describing blob: safetensors bytes whose metadata holds the config.

    Adapters are float32 on the CPU by the time they are written, and safetensors' NumPy writer gives
    the very same bytes as its torch writer at a third of the cost (no shared-storage bookkeeping),
    which matters when a worker serializes a thousand adapters per pack.
    """
    metadata = {METADATA_KEY: json.dumps(config)}
    if all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors.values()):
        return save_numpy_bytes({k: t.contiguous().numpy() for k, t in tensors.items()}, metadata=metadata)
    return save_safetensors_bytes(tensors, metadata=metadata)


def read_blob_config(data: bytes) -> dict[str, Any]:
    """The config a blob carries in its safetensors header, parsed but not yet checked."""
    try:
        metadata = limits.read_header(data)[1].get("__metadata__", {})
    except ValueError:
        raise AdapterFormatError("blob is not a valid safetensors file") from None
    text = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if not isinstance(text, str):
        raise AdapterFormatError(f"blob is not a ulpt adapter: no {METADATA_KEY} in its metadata")
    return parse_config(text)


def from_blob(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a blob, the header checked against the config before tensors are made."""
    config = read_blob_config(data)
    spec, hidden, _ = limits.spec_from_config(config)
    return config, _checked_tensors(data, spec, hidden)


def blob_config(data: bytes) -> dict[str, Any]:
    """The checked config of a blob (no tensors read), for registering blobs workers already serialized.

    The tensors themselves are checked against this config (shapes, projection fingerprint) whenever
    the blob is loaded.
    """
    try:
        config = read_blob_config(data)
    except AdapterFormatError as exc:
        raise AdapterFormatError(f"not a ulpt adapter blob ({exc})") from None
    check_format_version(config)
    spec, hidden, _ = limits.spec_from_config(config)
    if config.get("num_trainable_params") != spec.num_trainable_params(hidden):
        raise AdapterFormatError("adapter config's num_trainable_params does not match its shape")
    return config


# ---- folder: adapter.safetensors + adapter_config.json ----------------------------------------


def write_folder(
    folder: str | os.PathLike[str], tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> Path:
    """Write the two files; each appears whole or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS_NAME, save_safetensors_bytes(tensors))
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def read_folder(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a saved adapter; a weights file larger than its config allows is not read."""
    folder = Path(folder)
    try:
        with open(folder / CONFIG_NAME, "rb") as handle:
            config = parse_config(handle.read(limits.MAX_HEADER_BYTES + 1))
        spec, hidden, _ = limits.spec_from_config(config)
        with open(folder / WEIGHTS_NAME, "rb") as handle:
            limits.check_file_size(os.fstat(handle.fileno()).st_size, spec, hidden)
            weights = handle.read()
    except FileNotFoundError as exc:
        raise AdapterFormatError(f"not an adapter folder: {exc.filename} is missing") from None
    except OSError as exc:
        raise AdapterFormatError(f"cannot read adapter {folder}: {exc.strerror or exc}") from None
    return config, _checked_tensors(weights, spec, hidden)


# ---- shared ------------------------------------------------------------------------------------


def parse_config(text: str | bytes) -> dict[str, Any]:
    if len(text) > limits.MAX_HEADER_BYTES:
        raise AdapterFormatError(f"adapter config is larger than {limits.MAX_HEADER_BYTES} bytes")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"adapter config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterFormatError("adapter config must be a JSON object")
    return config


def _checked_tensors(weights: bytes, spec: AdapterSpec, hidden: int) -> dict[str, torch.Tensor]:
    """The weights' tensors, once their header lists exactly what the spec's method stores."""
    limits.check_header(weights, spec.adapter_method.shapes(spec, hidden))
    try:
        return load_safetensors_bytes(weights)
    except Exception as exc:  # safetensors raises its own error types for every malformed input
        raise AdapterFormatError(f"adapter weights are not a valid safetensors file: {exc}") from None
