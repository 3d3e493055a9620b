"""The name under which a transformers model's forward takes its key/value cache.

transformers renamed `past_key_values=` to `cache=` (5.24 takes both and warns on the old one, which
the test suite turns into an error; earlier 5.x releases know only the old one). ulpt supports both
ranges because vLLM's CPU wheel pins transformers below the rename, so every forward call passes its
cache through `cache_kwargs`, which asks the model's own signature once per model class.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any


@cache
def cache_argument(model_class: Any) -> str:
    """`cache` when `model_class.forward` accepts it, else `past_key_values`."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(**inputs, **cache_kwargs(model, cache))`."""
    model_class: Any = type(model)
    return {cache_argument(model_class): cache}
