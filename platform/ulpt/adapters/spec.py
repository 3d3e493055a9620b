"""`AdapterSpec`: what an adapter is, independent of any base model."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from ulpt.errors import SpecError
from ulpt.validation import SpecModel

Method = Literal["ulpt", "pt", "dpt", "lopt1", "lopt2"]
METHODS: tuple[str, ...] = get_args(Method)
"""ulpt: Z P * scale + shift, P frozen from the seed; pt: the full [n, d] prompt; dpt: A B, both learned;
lopt1: U V, both learned (LoPT-1); lopt2: tanh(X0 U) V, U and V learned, X0 frozen from the seed (LoPT-2)."""

LOW_RANK_METHODS = ("ulpt", "dpt", "lopt1", "lopt2")

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
    def _vocab_init_is_for_pt(self) -> AdapterSpec:
        if self.init == "vocab" and self.method != "pt":
            raise ValueError("init='vocab' applies to method 'pt' only")
        return self

    @property
    def is_low_rank(self) -> bool:
        return self.method in LOW_RANK_METHODS

    def check_hidden_size(self, hidden_size: int) -> None:
        """A low-rank prompt only saves parameters (and is only well defined) below the model's width."""
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int):
            raise SpecError(f"hidden_size must be an integer, got {hidden_size!r}")
        if not 1 <= hidden_size <= MAX_HIDDEN_SIZE:
            raise SpecError(f"hidden_size must be in [1, {MAX_HIDDEN_SIZE}], got {hidden_size}")
        if self.is_low_rank and self.rank >= hidden_size:
            raise SpecError(f"rank must be below the model's hidden size {hidden_size}, got {self.rank}")

    def num_trainable_params(self, hidden_size: int) -> int:
        n, r, d = self.n_tokens, self.rank, hidden_size
        if self.method == "pt":
            return n * d
        if self.method in ("dpt", "lopt1"):
            return n * r + r * d
        if self.method == "lopt2":
            return 2 * r * d
        return n * r + d * (int(self.use_shift) + int(self.use_scale))
