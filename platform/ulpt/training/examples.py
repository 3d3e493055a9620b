"""Rows of text turned into token ids once, and the label set that makes accuracy meaningful."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ulpt.errors import DataError

MAX_LABELS = 16
"""Targets drawn from at most this many distinct short strings are treated as class labels."""


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    text: str
    target: str
    choices: tuple[str, ...] = ()  # this row's own candidate labels, if the data gives them


def check_rows(rows: Iterable[Mapping[str, Any]], what: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        if (
            not isinstance(row, Mapping)
            or not isinstance(row.get("input"), str)
            or not isinstance(row.get("target"), str)
        ):
            raise DataError(f"{what} row {i} must be a mapping with string 'input' and 'target'")
        if not row["target"].strip():
            raise DataError(f"{what} row {i} has an empty target")
        out.append(dict(row))
    return out


def label_set(rows: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The classes of a dataset without per-row `choices`: its few distinct short targets, if so."""
    if any(r.get("choices") for r in rows):
        return None  # rows are scored against their own choices
    targets = {r["target"] for r in rows}
    if len(targets) <= MAX_LABELS and all(len(t) <= 40 for t in targets) and len(rows) > len(targets):
        return sorted(targets)
    return None


def tokenize(model: Any, rows: Sequence[Mapping[str, Any]], n_tokens: int) -> list[Example]:
    """Token ids per row; refuses rows longer than the model's context once the prompt is added."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    examples = []
    for i, row in enumerate(rows):
        ids = tuple(model.encode(row["input"]))
        target = tuple(model.encode_target(row["input"], row["target"]))
        total = n_tokens + len(ids) + (0 if model.is_encoder_decoder else len(target))
        if limit and total > limit:
            raise DataError(f"row {i} needs {total} positions, more than the model's {limit}")
        examples.append(Example(ids, target, row["input"], row["target"], tuple(row.get("choices") or ())))
    return examples
