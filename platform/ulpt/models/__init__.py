"""Base models: loading, prepending prompts, and mixed-adapter batches."""

from ulpt.models.base import BaseModel, Generation, load_base_model
from ulpt.models.sampling import SamplingParams

__all__ = ["BaseModel", "Generation", "SamplingParams", "load_base_model"]
