"""LoPT-2: prompt = tanh(X0 U) V, with U [d, r] and V [r, d] learned and X0 [n, d] frozen from the seed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ulpt.adapters import projection
from ulpt.adapters.methods.base import AdapterMethod, Shapes

if TYPE_CHECKING:
    from ulpt.adapters.spec import AdapterSpec


class LowRankInputPromptMethod(AdapterMethod):
    """Low-rank prompt tuning, second variant: 2*r*d parameters, independent of the prompt length."""

    name = "lopt2"
    summary = "tanh(X0 U) V, U and V learned, X0 frozen from the seed (LoPT-2)"

    def shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        return {"lopt_u": (hidden, spec.rank), "lopt_v": (spec.rank, hidden)}

    def init_params(
        self, spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {
            "lopt_u": projection.xavier_uniform((hidden, spec.rank), spec.seed, "u"),  # [d, r]
            "lopt_v": projection.xavier_uniform((spec.rank, hidden), spec.seed, "v"),  # [r, d]
        }

    def frozen_shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        return {"x0": (spec.n_tokens, hidden)}

    def frozen_tensors(self, spec: AdapterSpec, hidden: int) -> dict[str, torch.Tensor]:
        # N(0, 1) entries keep X0 U at unit scale for a Xavier U, so tanh starts neither flat nor saturated.
        return {"x0": projection.normal((spec.n_tokens, hidden), spec.seed, "x0")}  # [n, d]

    def materialize(
        self, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        # The paper leaves sigma open; tanh is zero-centred, so rows of X0 stay distinct at the start.
        low = torch.tanh(frozen["x0"] @ params["lopt_u"])  # [..., n, d] @ [..., d, r] -> [..., n, r]
        return low @ params["lopt_v"]  # [..., n, r] @ [..., r, d]
