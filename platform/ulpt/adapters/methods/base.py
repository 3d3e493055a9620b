"""`AdapterMethod`: everything one way of parametrizing a prompt decides, in one class.

Everything downstream (mixed batches, serving, PEFT export) only sees materialized [n, d] prompts, so
a method is just: which tensors it learns and how they start, which tensor it regenerates from the
seed instead of storing, and one short formula. Callers ask `ulpt.adapters.methods.get(name)`
instead of branching on the method's name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from ulpt.adapters.spec import AdapterSpec

Shapes = dict[str, tuple[int, ...]]


class AdapterMethod(ABC):
    """One adapter method; stateless, so one shared instance serves every adapter of the method."""

    name: ClassVar[str]
    """The `method` value in specs, configs and the catalog."""
    summary: ClassVar[str]
    """The formula in one line, for help texts."""
    low_rank: ClassVar[bool] = True
    """Whether `spec.rank` shapes the prompt (it must then stay below the model's hidden size)."""
    inits: ClassVar[tuple[str, ...]] = ("normal",)
    """The `spec.init` values the method supports."""

    @abstractmethod
    def shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        """Names and shapes of the learned tensors, as stored in the adapter file.

        An adapter file must hold exactly these; a mismatch means a tampered or broken file.
        """

    @abstractmethod
    def init_params(
        self, spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Initial float32 values of the learned tensors, deterministic from `spec.seed`."""

    def frozen_shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        """Shapes of the tensors regenerated from the seed and never stored (at most one per method).

        Known without generating them, so the memory bound is checked before anything is allocated.
        """
        return {}

    def frozen_tensors(self, spec: AdapterSpec, hidden: int) -> dict[str, torch.Tensor]:
        """The frozen tensors themselves; the adapter file records their fingerprint."""
        return {}

    @abstractmethod
    def materialize(
        self, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The [n, d] prompt prepended to the token embeddings.

        Every tensor may also carry one leading dimension F (a stack of same-shaped fits, each with
        its own frozen tensors): the result is then [F, n, d], all prompts in one batched op.
        """

    def num_params(self, spec: AdapterSpec, hidden: int) -> int:
        """Number of learned scalars: what an adapter of this spec stores and trains."""
        return sum(math.prod(shape) for shape in self.shapes(spec, hidden).values())
