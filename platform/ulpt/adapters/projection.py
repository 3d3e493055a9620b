"""The only source of seeded randomness in ulpt.

ULPT never stores its [r, d] up-projection P: it is regenerated from an integer seed on a CPU
`torch.Generator`, so it is identical on every machine, and a SHA-256 fingerprint of its float32
bytes proves it. Initial values of learned tensors come from the same place, from streams derived
from the seed, so an adapter is reproducible from (spec, hidden size) alone.
"""

from __future__ import annotations

import hashlib
import math

import torch

GENERATOR_NAME = "torch.Generator(cpu)"
GENERATOR_VERSION = 1
"""Bump when the way a seed becomes numbers changes; old adapters then fail their fingerprint check."""


def make_generator(seed: int, stream: str = "projection") -> torch.Generator:
    """A CPU generator for `seed`; each `stream` (projection, init...) gets independent numbers."""
    if stream != "projection":
        digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
        seed = int.from_bytes(digest[:8], "little") >> 1
    return torch.Generator(device="cpu").manual_seed(seed)


def make_projection(seed: int, rank: int, hidden: int, distribution: str = "xavier_uniform") -> torch.Tensor:
    """Frozen [rank, hidden] matrix, identical on every machine for the same arguments.

    xavier_uniform (default, as the official ULPT code): U(+-sqrt(6 / (r + d))), which keeps prompt
    rows on the scale of token embeddings when Z ~ N(0, 1). normal: N(0, 1), as the paper's text.
    """
    gen = make_generator(seed)
    if distribution == "xavier_uniform":
        bound = math.sqrt(6.0 / (rank + hidden))
        return (torch.rand(rank, hidden, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    if distribution == "normal":
        return torch.randn(rank, hidden, generator=gen, dtype=torch.float32)
    raise ValueError(f"unknown projection distribution {distribution!r}")


def fingerprint(tensor: torch.Tensor) -> str:
    """SHA-256 of the tensor's contiguous float32 bytes, written as 'sha256:<hex>'."""
    data = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normal(shape: tuple[int, ...], seed: int, stream: str, std: float = 1.0) -> torch.Tensor:
    """N(0, std^2) initial values for a learned tensor."""
    return torch.randn(*shape, generator=make_generator(seed, stream), dtype=torch.float32) * std


def xavier_uniform(shape: tuple[int, int], seed: int, stream: str) -> torch.Tensor:
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return (torch.rand(*shape, generator=make_generator(seed, stream), dtype=torch.float32) * 2 - 1) * bound


def sample_rows(num_rows: int, population: int, seed: int, stream: str) -> torch.Tensor:
    """`num_rows` distinct indices in [0, population) (e.g. vocabulary rows for a prompt init)."""
    return torch.randperm(population, generator=make_generator(seed, stream))[:num_rows]
