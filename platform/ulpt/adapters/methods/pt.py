"""Prompt tuning: the full [n, d] prompt is learned and stored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ulpt.adapters import projection
from ulpt.adapters.methods.base import AdapterMethod, Shapes

if TYPE_CHECKING:
    from ulpt.adapters.spec import AdapterSpec


class PromptTuningMethod(AdapterMethod):
    """The baseline of the low-rank methods; the only method that can start from the vocabulary."""

    name = "pt"
    summary = "the full [n, d] prompt"
    low_rank = False
    inits = ("normal", "vocab")

    def shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        return {"pt_prompt": (spec.n_tokens, hidden)}

    def init_params(
        self, spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        n, seed = spec.n_tokens, spec.seed
        if spec.init == "vocab":
            if token_embeddings is None:
                raise ValueError("init='vocab' needs the base model's token embeddings")
            rows = projection.sample_rows(n, token_embeddings.shape[0], seed, "vocab")
            return {"pt_prompt": token_embeddings[rows].detach().to(torch.float32).clone()}  # [n, d]
        # Rows of norm ~1, on the scale of token embeddings.
        return {"pt_prompt": projection.normal((n, hidden), seed, "prompt", std=1.0 / math.sqrt(hidden))}

    def materialize(
        self, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return params["pt_prompt"]  # [..., n, d]
