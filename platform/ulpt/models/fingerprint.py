"""Digests that name a base model's exact weights, so an adapter records which base it was trained on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


def weights_fingerprint(files: Sequence[Path]) -> str:
    """SHA-256 over a model's weight files, in order: what the catalog records as its revision."""
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over in-memory weights, by name, for a model that has no weight files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return "sha256:" + digest.hexdigest()
