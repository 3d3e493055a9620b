"""Training: one adapter, or many packed into shared forward passes of one frozen base."""

from ulpt.training import sweep
from ulpt.training.api import FitRequest, TrainingFailed, train_adapter, train_adapters
from ulpt.training.config import TrainConfig
from ulpt.training.packed import FitState, PackedTrainer

__all__ = [
    "FitRequest",
    "FitState",
    "PackedTrainer",
    "TrainConfig",
    "TrainingFailed",
    "train_adapter",
    "sweep",
    "train_adapters",
]
