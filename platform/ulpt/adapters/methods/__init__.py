"""The registry of adapter methods: one `AdapterMethod` per name, in the order help texts list them.

Adding a method is one module here and one line below; specs, the CLI help, the file format, training
stacks and the serving cache all ask this registry.
"""

from __future__ import annotations

from ulpt.adapters.methods.base import AdapterMethod
from ulpt.adapters.methods.dpt import DecomposedPromptMethod
from ulpt.adapters.methods.lopt1 import LowRankPromptMethod
from ulpt.adapters.methods.lopt2 import LowRankInputPromptMethod
from ulpt.adapters.methods.pt import PromptTuningMethod
from ulpt.adapters.methods.ulpt import UlptMethod

REGISTRY: dict[str, AdapterMethod] = {
    method.name: method
    for method in (
        UlptMethod(),
        PromptTuningMethod(),
        DecomposedPromptMethod(),
        LowRankPromptMethod(),
        LowRankInputPromptMethod(),
    )
}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> AdapterMethod:
    """The method called `name`; a spec's method is already one of METHODS, so a miss is a caller's bug."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown adapter method {name!r}; known: {', '.join(METHODS)}") from None


def help_text() -> str:
    """Every method with its formula, for `--method` options and docs."""
    return "; ".join(f"{method.name}: {method.summary}" for method in REGISTRY.values())


__all__ = ["METHODS", "REGISTRY", "AdapterMethod", "get", "help_text"]
