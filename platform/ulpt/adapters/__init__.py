"""Prompt adapters: one class per method, the seeded projection, the file format and PEFT export."""

from ulpt.adapters.adapter import Adapter
from ulpt.adapters.methods import METHODS
from ulpt.adapters.spec import AdapterSpec

__all__ = ["METHODS", "Adapter", "AdapterSpec"]
