"""Serve replicas take one node-wide copy of the base model's weights (`ulpt.models.shared`).

The weights object must outlive any single replica: a replica that restarts or scales down must not
take the others' weights with it. So one named, detached actor per (model, dtype) puts the weights
into Ray's object store and owns them; every replica asks it for the reference and maps the buffer
read-only. The actor lives as long as the Ray cluster (a local `ulpt serve` stops with its Ray) and
is reused by the next deployment of the same model; it holds no CPU.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import ray
import torch

from ulpt.models import BaseModel, load_base_model
from ulpt.models.precision import resolve_dtype
from ulpt.models.shared import load_shared_base_model, put_base_model

log = logging.getLogger(__name__)

NAMESPACE = "ulpt"


@ray.remote(num_cpus=0)
class WeightsOwner:
    """Puts one base model into the object store and keeps the reference alive."""

    def __init__(self, model: str, dtype: str) -> None:
        self._ref = put_base_model(model, dtype)

    def reference(self) -> list[Any]:
        """[ObjectRef] or [None] (the store was too small); in a list so Ray passes the reference itself."""
        return [self._ref]


def owner_name(model: str, dtype: str) -> str:
    """A stable actor name per model and dtype (a folder path may be long or hold any character)."""
    digest = hashlib.sha256(f"{model}\0{dtype}".encode()).hexdigest()[:16]
    return f"ulpt-weights-{digest}"


def shared_base_model(model: str, dtype_name: str, device: torch.device) -> BaseModel:
    """The base model built on the node's shared weights; from disk when they cannot be shared."""
    dtype = str(resolve_dtype(dtype_name, device)).removeprefix("torch.")
    try:
        owner = WeightsOwner.options(  # type: ignore[attr-defined]
            name=owner_name(model, dtype), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote(model, dtype)
        (reference,) = ray.get(owner.reference.remote())
    except ray.exceptions.RayError as exc:
        # The disk load then fails with the model's own error if the model is at fault.
        log.warning("sharing the base model failed (%s): loading it from disk", str(exc).splitlines()[0])
        reference = None
    if reference is None:  # the owner logged why (the object store is too small)
        return load_base_model(model, device=device, dtype=dtype)
    return load_shared_base_model(reference, device=device)
