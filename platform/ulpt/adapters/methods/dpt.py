"""DPT: prompt = A B, with A [n, r] and B [r, d] both learned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ulpt.adapters import projection
from ulpt.adapters.methods.base import AdapterMethod, Shapes

if TYPE_CHECKING:
    from ulpt.adapters.spec import AdapterSpec


class DecomposedPromptMethod(AdapterMethod):
    """Decomposed prompt tuning: a learned low-rank factorization, n*r + r*d parameters."""

    name = "dpt"
    summary = "A B, both learned"

    def shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        return {"dpt_a": (spec.n_tokens, spec.rank), "dpt_b": (spec.rank, hidden)}

    def init_params(
        self, spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {
            "dpt_a": projection.normal((spec.n_tokens, spec.rank), spec.seed, "a"),  # [n, r]
            "dpt_b": projection.xavier_uniform((spec.rank, hidden), spec.seed, "b"),  # [r, d]
        }

    def materialize(
        self, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return params["dpt_a"] @ params["dpt_b"]  # [..., n, r] @ [..., r, d]
