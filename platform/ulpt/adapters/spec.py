"""`AdapterSpec`: what an adapter is, independent of any base model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ulpt.errors import SpecError
from ulpt.validation import check_int, check_known_fields

METHODS = ("ulpt", "pt", "dpt", "lopt1", "lopt2")
"""ulpt: Z P * scale + shift, P frozen from the seed; pt: the full [n, d] prompt; dpt: A B, both learned;
lopt1: U V, both learned (LoPT-1); lopt2: tanh(X0 U) V, U and V learned, X0 frozen from the seed (LoPT-2)."""

LOW_RANK_METHODS = ("ulpt", "dpt", "lopt1", "lopt2")

PROJECTIONS = ("xavier_uniform", "normal")
INITS = ("normal", "vocab")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class AdapterSpec:
    """The shape and randomness of one adapter; travels SDK -> catalog -> worker -> file -> server."""

    method: str = "ulpt"
    """One of METHODS."""
    n_tokens: int = 10
    """Number of prompt tokens `n` prepended to every input."""
    rank: int = 2
    """Low dimension `r` of the low-rank methods (ignored by pt)."""
    seed: int = 0
    """Seeds the frozen projection P and the initial values; any integer in [0, 2**63)."""
    init: str = "normal"
    """normal: Z ~ N(0, 1) (ulpt, dpt), rows of norm ~1 (pt); vocab: pt rows copied from token embeddings."""
    projection: str = "xavier_uniform"
    """Distribution of P: xavier_uniform U(+-sqrt(6/(r+d))) as the official ULPT code, or normal N(0, 1)."""
    use_shift: bool = True
    """ulpt only: learn the shift vector (the paper's ablation turns it off)."""
    use_scale: bool = True
    """ulpt only: learn the scale vector."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SpecError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_int("n_tokens", self.n_tokens, 1, 4096)
        check_int("rank", self.rank, 1, 65536)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.init not in INITS:
            raise SpecError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "vocab" and self.method != "pt":
            raise SpecError("init='vocab' applies to method 'pt' only")
        if self.projection not in PROJECTIONS:
            raise SpecError(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        for name in ("use_shift", "use_scale"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def is_low_rank(self) -> bool:
        return self.method in LOW_RANK_METHODS

    def check_hidden_size(self, hidden_size: int) -> None:
        """A low-rank prompt only saves parameters (and is only well defined) below the model's width."""
        check_int("hidden_size", hidden_size, 1, 1 << 20)
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        check_known_fields(cls, data, "adapter")
        return cls(**data)
