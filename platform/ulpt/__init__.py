"""ulpt: ultra-low-dimensional prompt adapters, trained in bulk, cataloged and served on Ray."""

from ulpt.adapters import METHODS, Adapter, AdapterSpec
from ulpt.errors import UlptError
from ulpt.jobspec import DatasetSpec, FitSpec, JobSpec
from ulpt.models import BaseModel, SamplingParams, load_base_model
from ulpt.sdk import Client
from ulpt.training import FitRequest, TrainConfig, train_adapter, train_adapters

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
