"""The registry of adapter methods: one class per method, and each class consistent with itself."""

from __future__ import annotations

import pytest
import torch

import ulpt
from ulpt.adapters import methods
from ulpt.adapters.spec import AdapterSpec

HIDDEN = 24
SPECS = [
    AdapterSpec(method="ulpt", n_tokens=5, rank=3, seed=1),
    AdapterSpec(method="ulpt", n_tokens=5, rank=3, seed=1, use_shift=False),
    AdapterSpec(method="ulpt", n_tokens=5, rank=3, seed=1, use_shift=False, use_scale=False),
    AdapterSpec(method="pt", n_tokens=5, seed=2),
    AdapterSpec(method="pt", n_tokens=5, seed=2, init="vocab"),
    AdapterSpec(method="dpt", n_tokens=5, rank=3, seed=3),
    AdapterSpec(method="lopt1", n_tokens=5, rank=3, seed=4),
    AdapterSpec(method="lopt2", n_tokens=5, rank=3, seed=5),
]
VOCAB = torch.randn(40, HIDDEN, generator=torch.Generator().manual_seed(0))


def test_the_registry_lists_exactly_the_five_methods_everywhere() -> None:
    assert list(methods.REGISTRY) == ["ulpt", "pt", "dpt", "lopt1", "lopt2"]
    assert ulpt.METHODS == ulpt.adapters.METHODS == tuple(methods.REGISTRY)
    assert all(methods.get(name).name == name for name in methods.METHODS)
    assert all(f"{name}: " in methods.help_text() for name in methods.METHODS)
    with pytest.raises(ulpt.errors.SpecError, match="method must be one of"):
        AdapterSpec(method="lora")


def test_every_method_has_a_spec_in_these_tests() -> None:
    assert {spec.method for spec in SPECS} == set(methods.METHODS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method}-{s.init}-{s.use_shift}-{s.use_scale}")
def test_parameter_count_is_the_numel_of_the_initialized_parameters(spec: AdapterSpec) -> None:
    method = methods.get(spec.method)
    params = method.init_params(spec, HIDDEN, VOCAB)
    assert method.num_params(spec, HIDDEN) == sum(t.numel() for t in params.values())
    assert spec.num_trainable_params(HIDDEN) == method.num_params(spec, HIDDEN)
    assert {k: tuple(t.shape) for k, t in params.items()} == method.shapes(spec, HIDDEN)
    assert all(t.dtype == torch.float32 for t in params.values())
    frozen = method.frozen_tensors(spec, HIDDEN)
    assert {k: tuple(t.shape) for k, t in frozen.items()} == method.frozen_shapes(spec, HIDDEN)
    assert method.materialize(params, frozen).shape == (spec.n_tokens, HIDDEN)
    adapter = ulpt.Adapter.create(spec, HIDDEN, token_embeddings=VOCAB)
    assert adapter.num_trainable_params == method.num_params(spec, HIDDEN)


@pytest.mark.parametrize("name", methods.METHODS)
def test_stacked_materialize_equals_each_fit_alone(name: str) -> None:
    """A leading stack dimension F gives the F prompts one fit at a time would, in one batched op."""
    method = methods.get(name)
    specs = [AdapterSpec(method=name, n_tokens=4, rank=2, seed=seed) for seed in (7, 8, 9)]
    params = [method.init_params(spec, HIDDEN) for spec in specs]
    frozen = [method.frozen_tensors(spec, HIDDEN) for spec in specs]
    stacked = method.materialize(
        {k: torch.stack([p[k] for p in params]) for k in params[0]},
        {k: torch.stack([f[k] for f in frozen]) for k in frozen[0]},
    )
    alone = torch.stack([method.materialize(p, f) for p, f in zip(params, frozen)])
    assert stacked.shape == (3, 4, HIDDEN)
    torch.testing.assert_close(stacked, alone)
