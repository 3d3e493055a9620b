"""LoPT-1: prompt = U V, with U [n, r] and V [r, d] both learned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ulpt.adapters import projection
from ulpt.adapters.methods.base import AdapterMethod, Shapes

if TYPE_CHECKING:
    from ulpt.adapters.spec import AdapterSpec


class LowRankPromptMethod(AdapterMethod):
    """Low-rank prompt tuning, first variant: DPT's factorization under LoPT's names, r*(n + d) parameters."""

    name = "lopt1"
    summary = "U V, both learned (LoPT-1)"

    def shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        return {"lopt_u": (spec.n_tokens, spec.rank), "lopt_v": (spec.rank, hidden)}

    def init_params(
        self, spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {
            "lopt_u": projection.normal((spec.n_tokens, spec.rank), spec.seed, "u"),  # [n, r]
            "lopt_v": projection.xavier_uniform((spec.rank, hidden), spec.seed, "v"),  # [r, d]
        }

    def materialize(
        self, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return params["lopt_u"] @ params["lopt_v"]  # [..., n, r] @ [..., r, d]
