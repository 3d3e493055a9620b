"""Base models: loading, prepending prompts, and mixed-adapter batches."""

from ulpt.models.base import BaseModel
from ulpt.models.causal import CausalModel
from ulpt.models.loading import load_base_model
from ulpt.models.output import Generation
from ulpt.models.sampling import SamplingParams
from ulpt.models.seq2seq import Seq2SeqModel

__all__ = ["BaseModel", "CausalModel", "Generation", "SamplingParams", "Seq2SeqModel", "load_base_model"]
