"""What `ulpt demo` shows and keeps: the results table on the console and `<ULPT_HOME>/demo/results.json`.

The JSON is the table as data (one entry per adapter), so a script or a person comparing two runs
reads the same numbers the console printed, with how many held-out rows each accuracy rests on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ulpt.config import atomic_write_bytes


def results_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="held-out accuracy (multiple-choice scoring)")
    columns = (
        "adapter",
        "task",
        "accuracy",
        "zero-shot",
        "gain",
        "test rows",
        "trainable params",
        "file bytes",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("adapter", "task") else "right", no_wrap=True)
    for row in rows:
        if "error" in row:
            table.add_row(row["name"], row["task"], f"failed: {row['error']}", *[""] * 5)
            continue
        table.add_row(
            row["name"],
            row["task"],
            f"{row['accuracy']:.3f}",
            f"{row['zero_shot']:.3f}",
            f"{row['accuracy'] - row['zero_shot']:+.3f}",
            str(row["test_rows"]),
            f"{row['params']:,}",
            f"{row['bytes']:,}",
        )
    return table


def write_results(path: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Write the demo's table as JSON (atomically: a crash never leaves half a file)."""
    document = {"settings": settings, "adapters": rows}
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
    return path


def answers_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table
