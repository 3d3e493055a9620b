"""`AdapterSpec`: what an adapter is, independent of any base model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ulpt.adapters import methods
from ulpt.adapters.methods import METHODS, AdapterMethod
from ulpt.errors import SpecError
from ulpt.validation import SpecModel

if TYPE_CHECKING:
    Method = str
else:  # the registry's names as a Literal, so pydantic checks them and the JSON Schema lists them
    Method = Literal[METHODS]

Projection = Literal["xavier_uniform", "normal"]
Init = Literal["normal", "vocab"]
MAX_SEED = 2**63 - 1
MAX_HIDDEN_SIZE = 1 << 20


class AdapterSpec(SpecModel):
    """The shape and randomness of one adapter; travels SDK -> catalog -> worker -> file -> server."""

    method: Method = "ulpt"
    """One of METHODS."""
    n_tokens: int = Field(default=10, ge=1, le=4096)
    """Number of prompt tokens `n` prepended to every input."""
    rank: int = Field(default=2, ge=1, le=65536)
    """Low dimension `r` of the low-rank methods (ignored by pt)."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seeds the frozen projection P and the initial values; any integer in [0, 2**63)."""
    init: Init = "normal"
    """normal: Z ~ N(0, 1) (ulpt, dpt), rows of norm ~1 (pt); vocab: pt rows copied from token embeddings."""
    projection: Projection = "xavier_uniform"
    """Distribution of P: xavier_uniform U(+-sqrt(6/(r+d))) as the official ULPT code, or normal N(0, 1)."""
    use_shift: bool = True
    """ulpt only: learn the shift vector (the paper's ablation turns it off)."""
    use_scale: bool = True
    """ulpt only: learn the scale vector."""

    @model_validator(mode="after")
    def _init_is_one_the_method_supports(self) -> AdapterSpec:
        if self.init not in self.adapter_method.inits:
            users = " or ".join(repr(m.name) for m in methods.REGISTRY.values() if self.init in m.inits)
            raise ValueError(f"init={self.init!r} applies to method {users} only")
        return self

    @property
    def adapter_method(self) -> AdapterMethod:
        """The class that owns this method's tensors, initialization and formula."""
        return methods.get(self.method)

    @property
    def is_low_rank(self) -> bool:
        return self.adapter_method.low_rank

    def check_hidden_size(self, hidden_size: int) -> None:
        """A low-rank prompt only saves parameters (and is only well defined) below the model's width."""
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int):
            raise SpecError(f"hidden_size must be an integer, got {hidden_size!r}")
        if not 1 <= hidden_size <= MAX_HIDDEN_SIZE:
            raise SpecError(f"hidden_size must be in [1, {MAX_HIDDEN_SIZE}], got {hidden_size}")
        if self.is_low_rank and self.rank >= hidden_size:
            raise SpecError(f"rank must be below the model's hidden size {hidden_size}, got {self.rank}")

    def num_trainable_params(self, hidden_size: int) -> int:
        return self.adapter_method.num_params(self, hidden_size)
