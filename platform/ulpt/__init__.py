"""ulpt: ultra-low-dimensional prompt adapters, trained in bulk, cataloged and served on Ray.

`ulpt.Client` (the SDK) is imported on first use, not here: every `import ulpt.<module>` runs this
file first, and the jobs and serving layers import core modules, so an eager SDK import here would
make the bottom layer import the top one (the SDK imports the jobs layer, which imports the core).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ulpt.adapters import METHODS, Adapter, AdapterSpec
from ulpt.errors import UlptError
from ulpt.jobspec import DatasetSpec, FitSpec, JobSpec
from ulpt.models import BaseModel, SamplingParams, load_base_model
from ulpt.training import FitRequest, TrainConfig, train_adapter, train_adapters

if TYPE_CHECKING:
    from ulpt.sdk import Client

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Adapter",
    "AdapterSpec",
    "BaseModel",
    "Client",
    "DatasetSpec",
    "FitSpec",
    "JobSpec",
    "FitRequest",
    "SamplingParams",
    "TrainConfig",
    "UlptError",
    "__version__",
    "load_base_model",
    "train_adapter",
    "train_adapters",
]


def __getattr__(name: str) -> Any:
    """`ulpt.Client`, imported when first asked for (see the module docstring)."""
    if name == "Client":
        from ulpt.sdk import Client

        return Client
    raise AttributeError(f"module 'ulpt' has no attribute {name!r}")
