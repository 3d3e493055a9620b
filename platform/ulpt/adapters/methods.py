"""How each method parametrizes its [n, d] prompt, and how to materialize it.

Everything downstream (mixed batches, serving, PEFT export) only sees materialized prompts, so a
method is just: which tensors it learns, how they start, and one short formula.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ulpt.adapters import projection
from ulpt.adapters.spec import AdapterSpec


def init_params(
    spec: AdapterSpec, hidden: int, token_embeddings: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Initial values of the learned tensors, named as in the adapter file."""
    n, r, d, seed = spec.n_tokens, spec.rank, hidden, spec.seed
    if spec.method == "ulpt":
        params = {"ulpt_z": projection.normal((n, r), seed, "z")}  # [n, r] ~ N(0, 1), as the paper
        if spec.use_scale:
            params["ulpt_scale"] = torch.ones(d)  # [d]
        if spec.use_shift:
            params["ulpt_shift"] = torch.zeros(d)  # [d]
        return params
    if spec.method == "dpt":
        return {
            "dpt_a": projection.normal((n, r), seed, "a"),  # [n, r]
            "dpt_b": projection.xavier_uniform((r, d), seed, "b"),  # [r, d]
        }
    if spec.method == "lopt1":
        return {
            "lopt_u": projection.normal((n, r), seed, "u"),  # [n, r]
            "lopt_v": projection.xavier_uniform((r, d), seed, "v"),  # [r, d]
        }
    if spec.method == "lopt2":
        return {
            "lopt_u": projection.xavier_uniform((d, r), seed, "u"),  # [d, r]
            "lopt_v": projection.xavier_uniform((r, d), seed, "v"),  # [r, d]
        }
    if spec.init == "vocab":
        if token_embeddings is None:
            raise ValueError("init='vocab' needs the base model's token embeddings")
        rows = projection.sample_rows(n, token_embeddings.shape[0], seed, "vocab")
        return {"pt_prompt": token_embeddings[rows].detach().to(torch.float32).clone()}  # [n, d]
    return {"pt_prompt": projection.normal((n, d), seed, "prompt", std=1.0 / math.sqrt(d))}  # rows of norm ~1


def frozen_tensors(spec: AdapterSpec, hidden: int) -> dict[str, torch.Tensor]:
    """Tensors regenerated from the seed and never stored: ULPT's projection P, LoPT-2's input X0.

    At most one per method; the adapter file records its fingerprint so a changed seed is caught.
    """
    if spec.method == "ulpt":
        return {"proj": projection.make_projection(spec.seed, spec.rank, hidden, spec.projection)}
    if spec.method == "lopt2":
        # N(0, 1) entries keep X0 U at unit scale for a Xavier U, so tanh starts neither flat nor saturated.
        return {"x0": projection.normal((spec.n_tokens, hidden), spec.seed, "x0")}  # [n, d]
    return {}


def materialize(
    spec: AdapterSpec, params: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The [n, d] prompt prepended to the token embeddings.

    Every tensor may also carry one leading dimension F (a stack of same-shaped fits, each with its
    own frozen tensors): the result is then [F, n, d], all prompts in one batched op.
    """
    if spec.method == "ulpt":
        prompt = params["ulpt_z"] @ frozen["proj"]  # [..., n, r] @ [..., r, d] -> [..., n, d]
        if "ulpt_scale" in params:
            prompt = prompt * params["ulpt_scale"].unsqueeze(-2)  # [..., 1, d]
        if "ulpt_shift" in params:
            prompt = prompt + params["ulpt_shift"].unsqueeze(-2)
        return prompt
    if spec.method == "dpt":
        return params["dpt_a"] @ params["dpt_b"]  # [n, r] @ [r, d]
    if spec.method == "lopt1":
        return params["lopt_u"] @ params["lopt_v"]  # [n, r] @ [r, d]
    if spec.method == "lopt2":
        # The paper leaves sigma open; tanh is zero-centred, so rows of X0 stay distinct at the start.
        return torch.tanh(frozen["x0"] @ params["lopt_u"]) @ params["lopt_v"]  # [n, d] @ [d, r] @ [r, d]
    return params["pt_prompt"]


def expected_shapes(spec: AdapterSpec, hidden: int) -> dict[str, tuple[int, ...]]:
    """Shapes an adapter file must hold for its config; a mismatch means a tampered or broken file."""
    n, r, d = spec.n_tokens, spec.rank, hidden
    if spec.method == "ulpt":
        shapes: dict[str, tuple[int, ...]] = {"ulpt_z": (n, r)}
        if spec.use_scale:
            shapes["ulpt_scale"] = (d,)
        if spec.use_shift:
            shapes["ulpt_shift"] = (d,)
        return shapes
    if spec.method == "dpt":
        return {"dpt_a": (n, r), "dpt_b": (r, d)}
    if spec.method == "lopt1":
        return {"lopt_u": (n, r), "lopt_v": (r, d)}
    if spec.method == "lopt2":
        return {"lopt_u": (d, r), "lopt_v": (r, d)}
    return {"pt_prompt": (n, d)}
