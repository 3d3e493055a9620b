"""The one adapter codec: the folder, the blob and the registry's header-only read agree."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import ulpt
from ulpt.adapters import codec
from ulpt.errors import AdapterFormatError


def _blob_with_config(blob: bytes, **changes: object) -> bytes:
    """The same tensors under a rewritten config (a new header, the data section untouched)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    config = json.loads(header["__metadata__"]["adapter_config"])
    header["__metadata__"]["adapter_config"] = json.dumps({**config, **changes})
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + blob[8 + length :]


@pytest.mark.parametrize("method", ulpt.METHODS)
def test_folder_blob_and_header_read_give_the_same_config_and_tensors(method: str, tmp_path) -> None:
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(method=method, n_tokens=3, rank=2, seed=4), 16)
    blob = adapter.to_bytes()
    assert codec.blob_config(blob) == codec.read_blob_config(blob) == adapter.config()
    folder_config, folder_tensors = codec.read_folder(adapter.save(tmp_path))
    blob_config, blob_tensors = codec.from_blob(blob)
    assert folder_config == blob_config == adapter.config()
    assert folder_tensors.keys() == blob_tensors.keys() == adapter.tensors().keys()
    assert all(torch.equal(folder_tensors[k], blob_tensors[k]) for k in folder_tensors)


@pytest.mark.parametrize("method", ulpt.METHODS)
def test_blob_bytes_are_the_safetensors_torch_writer_bytes(method: str) -> None:
    """The blob is named by its hash: the fast writer must give the bytes the torch writer gives,
    or the same adapter would be stored twice under two keys (and old blobs would stop deduplicating)."""
    from safetensors.torch import save

    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(method=method, n_tokens=3, rank=2, seed=4), 16)
    expected = save(adapter.tensors(), metadata={codec.METADATA_KEY: json.dumps(adapter.config())})
    assert adapter.to_bytes() == expected
    half = {k: t.to(torch.bfloat16) for k, t in adapter.tensors().items()}  # the torch writer's path
    assert codec.to_blob(half, adapter.config()) == save(
        half, metadata={codec.METADATA_KEY: json.dumps(adapter.config())}
    )


def _header_only(header: dict[str, object]) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def test_header_read_refuses_what_loading_would_refuse() -> None:
    blob = ulpt.Adapter.create(ulpt.AdapterSpec(seed=1), 16).to_bytes()
    with pytest.raises(AdapterFormatError, match="not a ulpt adapter blob"):
        codec.blob_config(b"\x00" * 64)
    for metadata in ({"other": "x"}, {"adapter_config": 5}, "not a mapping"):
        with pytest.raises(AdapterFormatError, match="not a ulpt adapter blob .*no adapter_config"):
            codec.blob_config(_header_only({"__metadata__": metadata}))
    with pytest.raises(AdapterFormatError, match="num_trainable_params does not match"):
        codec.blob_config(_blob_with_config(blob, num_trainable_params=1))
    with pytest.raises(AdapterFormatError, match="unsupported adapter format_version 2"):
        codec.blob_config(_blob_with_config(blob, format_version=2))
    with pytest.raises(AdapterFormatError, match="no projection record"):  # its seed could not be checked
        codec.blob_config(_blob_with_config(blob, projection=None))
    with pytest.raises(AdapterFormatError, match="method must be one of"):
        codec.blob_config(_blob_with_config(blob, method="lora"))
