"""Prompt adapters: the method math, the seeded projection, the file format and PEFT export."""

from ulpt.adapters.adapter import Adapter
from ulpt.adapters.spec import METHODS, AdapterSpec

__all__ = ["METHODS", "Adapter", "AdapterSpec"]
