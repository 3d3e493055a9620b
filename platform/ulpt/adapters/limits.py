"""Cheap checks on an adapter's config and safetensors header, run before any tensor is allocated.

A file of a few megabytes may claim a rank and hidden size whose projection P takes hundreds of
gigabytes to regenerate. Everything here reads only the config and the safetensors header, so such a
file is refused before P is generated or the weights are copied into tensors.

The bound on what one adapter may occupy in memory (learned tensors + the frozen tensor regenerated
from its seed + the materialized [n, d] prompt, all float32) is `ULPT_MAX_ADAPTER_BYTES`, default
256 MiB: a thousand times what a rank-64 ULPT adapter of a 8192-wide model needs.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

from ulpt.adapters.spec import AdapterSpec
from ulpt.errors import AdapterFormatError, SpecError

MAX_BYTES_ENV = "ULPT_MAX_ADAPTER_BYTES"
DEFAULT_MAX_BYTES = 256 << 20
MAX_HEADER_BYTES = 1 << 20
"""A ulpt adapter's safetensors header is a few hundred bytes plus its config; 1 MiB is generous."""
FLOAT32_BYTES = 4
_SPEC_KEYS = ("method", "n_tokens", "rank", "seed", "init", "projection", "use_shift", "use_scale")


def max_adapter_bytes() -> int:
    """The configured bound (`ULPT_MAX_ADAPTER_BYTES`, a positive integer number of bytes)."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise SpecError(f"{MAX_BYTES_ENV} must be a positive integer number of bytes, got {text!r}")
    return int(text)


def memory_needed(spec: AdapterSpec, hidden: int) -> int:
    """Bytes an adapter holds once loaded: learned tensors, frozen tensor and materialized prompt."""
    method = spec.adapter_method
    learned = sum(math.prod(shape) for shape in method.shapes(spec, hidden).values())
    frozen = sum(math.prod(shape) for shape in method.frozen_shapes(spec, hidden).values())
    return (learned + frozen + spec.n_tokens * hidden) * FLOAT32_BYTES


def check_memory(spec: AdapterSpec, hidden: int) -> None:
    needed, bound = memory_needed(spec, hidden), max_adapter_bytes()
    if needed > bound:
        raise AdapterFormatError(
            f"adapter would need {needed / 2**20:,.0f} MiB in memory (rank={spec.rank}, "
            f"n_tokens={spec.n_tokens}, hidden_size={hidden}), above the {bound / 2**20:,.0f} MiB "
            f"bound ({MAX_BYTES_ENV})"
        )


def spec_from_config(config: dict[str, Any]) -> tuple[AdapterSpec, int, dict[str, Any] | None]:
    """(spec, hidden size, projection record) from adapter_config.json, checked and within the bound.

    A method with a frozen tensor must carry its projection record: without it the fingerprint
    check, which proves the seed regenerates what the adapter was trained with, would be skipped.
    """
    try:
        spec_fields = {k: config[k] for k in _SPEC_KEYS}
        proj = spec_fields.pop("projection")
        if proj is not None and not isinstance(proj, dict):
            raise TypeError("projection must be an object")
        spec_fields["projection"] = proj["distribution"] if proj else "xavier_uniform"
        spec = AdapterSpec(**spec_fields)
        hidden = config["hidden_size"]
        spec.check_hidden_size(hidden)
    except (KeyError, TypeError) as exc:
        raise AdapterFormatError(f"adapter config is missing or has a malformed field: {exc}") from None
    except SpecError as exc:
        raise AdapterFormatError(f"adapter config is invalid: {exc}") from None
    if proj is None and spec.adapter_method.frozen_shapes(spec, hidden):
        raise AdapterFormatError(
            f"adapter config has no projection record: a {spec.method} adapter needs one to check its seed"
        )
    check_memory(spec, hidden)
    return spec, hidden, proj


def check_file_size(size: int, spec: AdapterSpec, hidden: int) -> None:
    """A weights file can only be its tensors plus a small header: refuse anything larger unread."""
    shapes = spec.adapter_method.shapes(spec, hidden)
    tensors = sum(math.prod(s) for s in shapes.values()) * FLOAT32_BYTES
    if not tensors < size <= tensors + 8 + MAX_HEADER_BYTES:
        raise AdapterFormatError(
            f"adapter weights are not a valid safetensors file for its config: {size} bytes, "
            f"where its tensors alone take {tensors}"
        )


def read_header(data: bytes) -> tuple[int, dict[str, Any]]:
    """(length, parsed JSON) of a safetensors header: an 8-byte little-endian length, then JSON.

    The one reader of the format's header, for the weights check, the blob's config and its metadata;
    raises ValueError on bytes that do not start with one.
    """
    try:
        (length,) = struct.unpack("<Q", data[:8])
    except struct.error:
        raise ValueError("shorter than a safetensors header") from None
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("a safetensors header is a JSON object")
    return length, header


def check_header(data: bytes, expected: dict[str, tuple[int, ...]]) -> None:
    """The safetensors header lists exactly the expected float32 tensors, laid out over the whole file."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if length > min(MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError("header length")
        _, header = read_header(data)
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        found = {k: tuple(int(n) for n in v["shape"]) for k, v in entries.items()}
        dtypes = {v["dtype"] for v in entries.values()}
        spans = sorted((int(v["data_offsets"][0]), int(v["data_offsets"][1]), k) for k, v in entries.items())
    except (struct.error, ValueError, AttributeError, KeyError, TypeError, IndexError):
        raise AdapterFormatError("adapter weights are not a valid safetensors file") from None
    if found != expected:
        raise AdapterFormatError(f"adapter tensors {found} do not match its config: expected {expected}")
    if dtypes - {"F32"}:
        raise AdapterFormatError(f"adapter tensors must be float32, found {sorted(dtypes)}")
    offset = 0
    for start, end, name in spans:
        if start != offset or end - start != math.prod(found[name]) * FLOAT32_BYTES:
            raise AdapterFormatError(f"adapter tensor {name} has a size or offset its shape does not allow")
        offset = end
    if 8 + length + offset != len(data):
        raise AdapterFormatError(
            f"adapter weights are {len(data)} bytes, but their header describes {8 + length + offset}"
        )
