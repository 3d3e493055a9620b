"""Registering an adapter: what the caller gives (`Registration`) and its checks before any write.

Everything that does not need the database is checked here, before a byte reaches the store, so a
bad registration leaves nothing behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ulpt.adapters import Adapter
from ulpt.adapters.codec import blob_config as read_blob_config
from ulpt.catalog.jobs import as_uuid
from ulpt.catalog.names import (
    MAX_VERSION,
    check_json,
    check_metrics,
    check_name,
    check_version,
    normalize_tags,
)
from ulpt.errors import AdapterFormatError, ConflictError, SpecError
from ulpt.registry.records import AdapterRecord


@dataclass(frozen=True)
class Registration:
    """One adapter to register, with everything the catalog records about it."""

    adapter: Adapter | bytes
    """The adapter, or its `to_bytes()` blob (the bulk path, when workers already serialized it)."""
    name: str
    base_model: str | None = None
    """Defaults to the adapter's own base_model."""
    tags: Mapping[str, Any] | Sequence[str] | None = None
    metrics: Mapping[str, Any] | None = None
    version: int | None = None
    """None: one more than the highest version this name ever had."""
    parent: str | uuid.UUID | AdapterRecord | None = None
    """The adapter this one was fine-tuned or derived from (a reference, an id or a record)."""
    dataset_fingerprint: str | None = None
    training_config: Mapping[str, Any] | None = None
    job_id: str | uuid.UUID | None = None
    public: bool = False


@dataclass(frozen=True)
class Prepared:
    """A registration checked and serialized, ready for the catalog transaction."""

    row: dict[str, Any]
    blob: bytes
    parent: str | uuid.UUID | None
    job_id: uuid.UUID | None


def version_after(name: str, last: Mapping[str, int]) -> int:
    """One more than the name's highest version ever, within the catalog's 32-bit version column."""
    version = last.get(name, 0) + 1
    if version > MAX_VERSION:
        raise ConflictError(
            f"adapter {name} has used every version up to {MAX_VERSION}; register under another name"
        )
    return version


def blob_config(data: bytes) -> dict[str, Any]:
    """The checked config an `Adapter.to_bytes()` blob carries in its safetensors header (no tensors read).

    Lets the bulk path register blobs that workers already serialized; the tensors themselves are
    checked against this config (shapes, projection fingerprint) whenever the blob is loaded.
    """
    try:
        return read_blob_config(data)
    except AdapterFormatError as exc:
        raise AdapterFormatError(f"not a ulpt adapter blob: {exc}") from None


def prepare(item: Registration) -> Prepared:
    """Validate everything that does not need the database, before any byte is written."""
    name = check_name(item.name)
    version = None if item.version is None else check_version(item.version)
    if isinstance(item.adapter, Adapter):
        config, blob = item.adapter.config(), item.adapter.to_bytes()
    elif isinstance(item.adapter, (bytes, bytearray, memoryview)):
        blob = bytes(item.adapter)
        config = blob_config(blob)
    else:
        raise SpecError(
            f"register needs a ulpt.Adapter (or its to_bytes() blob), got {type(item.adapter).__name__}"
        )
    own_base = config.get("base_model")
    base_model = item.base_model or own_base
    if not base_model:
        raise SpecError(f"adapter {name}: base_model is required (the adapter does not name one)")
    if item.base_model and own_base and item.base_model != own_base:
        raise SpecError(f"adapter {name}: base_model {item.base_model!r} is not the adapter's {own_base!r}")
    if item.dataset_fingerprint is not None and (
        not isinstance(item.dataset_fingerprint, str) or len(item.dataset_fingerprint) > 128
    ):
        raise SpecError("dataset_fingerprint must be a string of at most 128 characters")
    parent = item.parent
    if isinstance(parent, AdapterRecord):
        parent = uuid.UUID(parent.id)
    elif parent is not None and not isinstance(parent, (str, uuid.UUID)):
        raise SpecError(f"parent must be a reference, an id or an AdapterRecord, got {type(parent).__name__}")
    proj = config.get("projection") or {}
    training_config = item.training_config
    row = {
        "name": name,
        "version": version,
        "status": "ready",
        "method": config["method"],
        "base_model": base_model,
        "hidden_size": config["hidden_size"],
        "n_tokens": config["n_tokens"],
        "rank": config["rank"],
        "seed": config["seed"],
        "generator": proj.get("generator"),
        "generator_version": proj.get("generator_version"),
        "projection": proj.get("distribution"),
        "projection_fingerprint": proj.get("fingerprint"),
        "config": config,
        "num_trainable_params": config["num_trainable_params"],
        "metrics": check_metrics(item.metrics),
        "tags": normalize_tags(item.tags),
        "dataset_fingerprint": item.dataset_fingerprint,
        "training_config": None
        if training_config is None
        else check_json(dict(training_config), "training_config"),
        "public": bool(item.public),
        "deleted_at": None,
    }
    job_id = None if item.job_id is None else as_uuid(item.job_id)
    return Prepared(row=row, blob=blob, parent=parent, job_id=job_id)
