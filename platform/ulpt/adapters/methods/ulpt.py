"""ULPT: prompt = Z P * scale + shift, with Z [n, r] learned and P [r, d] frozen from the seed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ulpt.adapters import projection
from ulpt.adapters.methods.base import AdapterMethod, Shapes

if TYPE_CHECKING:
    from ulpt.adapters.spec import AdapterSpec


class UlptMethod(AdapterMethod):
    """Ultra-low-dimensional prompt tuning: only Z and two [d] vectors are stored; P comes from the seed."""

    name = "ulpt"
    summary = "Z P * scale + shift, P frozen from the seed"

    def shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        shapes: Shapes = {"ulpt_z": (spec.n_tokens, spec.rank)}
        if spec.use_scale:
            shapes["ulpt_scale"] = (hidden,)
        if spec.use_shift:
            shapes["ulpt_shift"] = (hidden,)
        return shapes

    def init_params(
        self, spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        params = {"ulpt_z": projection.normal((spec.n_tokens, spec.rank), spec.seed, "z")}  # [n, r] ~ N(0, 1)
        if spec.use_scale:
            params["ulpt_scale"] = torch.ones(hidden)  # [d]
        if spec.use_shift:
            params["ulpt_shift"] = torch.zeros(hidden)  # [d]
        return params

    def frozen_shapes(self, spec: AdapterSpec, hidden: int) -> Shapes:
        return {"proj": (spec.rank, hidden)}

    def frozen_tensors(self, spec: AdapterSpec, hidden: int) -> dict[str, torch.Tensor]:
        return {"proj": projection.make_projection(spec.seed, spec.rank, hidden, spec.projection)}  # [r, d]

    def materialize(
        self, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        prompt = params["ulpt_z"] @ frozen["proj"]  # [..., n, r] @ [..., r, d] -> [..., n, d]
        if "ulpt_scale" in params:
            prompt = prompt * params["ulpt_scale"].unsqueeze(-2)  # [..., 1, d]
        if "ulpt_shift" in params:
            prompt = prompt + params["ulpt_shift"].unsqueeze(-2)
        return prompt
