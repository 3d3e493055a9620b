"""Field checks shared by every spec dataclass, so all of them word their errors the same way."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ulpt.errors import SpecError


def check_int(name: str, value: Any, low: int, high: int) -> None:
    """`value` is an int (not a bool) in [low, high], else a SpecError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(f"{name} must be in [{low}, {high}], got {value}")


def check_number(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> float:
    """`value` is a finite int or float (never a bool: `lr: true` is a typo, not 1.0) within the bounds.

    Comparisons alone let NaN through (`nan < 0` is False), and a NaN or infinite timeout reads as
    "never": a server that takes one looks healthy and answers nothing.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else "(-inf"
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else "inf)"
    if (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (le is not None and not value <= le)
        or (lt is not None and not value < lt)
    ):
        raise SpecError(f"{name} must be a number in {low}, {high}, got {value!r}")
    return float(value)


def check_known_fields(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls`, listing the accepted ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown {what} field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
