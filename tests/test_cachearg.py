"""ulpt's model code runs on transformers releases before and after `past_key_values=` became `cache=`."""

from __future__ import annotations

from typing import Any

from ulpt.models.cachearg import cache_argument, cache_kwargs


class _Renamed:
    def forward(self, inputs_embeds: Any = None, cache: Any = None, use_cache: bool = False) -> None: ...


class _Before:
    def forward(
        self, inputs_embeds: Any = None, past_key_values: Any = None, use_cache: bool = False
    ) -> None: ...


def test_the_cache_goes_under_the_name_the_model_forward_takes() -> None:
    marker = object()
    assert cache_kwargs(_Renamed(), marker) == {"cache": marker}
    assert cache_kwargs(_Before(), marker) == {"past_key_values": marker}


def test_the_installed_transformers_models_are_asked_their_own_signature() -> None:
    import inspect

    from transformers import LlamaForCausalLM, T5ForConditionalGeneration

    for model_class in (LlamaForCausalLM, T5ForConditionalGeneration):
        name = cache_argument(model_class)
        assert name in inspect.signature(model_class.forward).parameters
