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

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.config import atomic_write_bytes


def result_rows(
    fits: Sequence[tuple[str, str, AdapterSpec]],
    adapters: dict[str, Adapter],
    scores: dict[str, float],
    constants: dict[str, float],
    used: dict[str, int],
    errors: dict[str, str | None],
    out_dir: Path,
    min_gain: float | None,
) -> list[dict[str, Any]]:
    """One entry per demo adapter (name, task, spec): what results.json and the console table show.

    `floor` is the better of zero-shot and the best constant answer (always the most frequent
    target); with `min_gain`, `passed` says whether the adapter beat the floor by at least that much.
    """
    rows: list[dict[str, Any]] = []
    for name, task, spec in fits:
        adapter = adapters.get(name)
        if adapter is None:
            rows.append({"name": name, "task": task, "error": errors.get(name) or "not trained"})
            continue
        folder = adapter.save(out_dir / name)
        floor = max(scores[f"zero-shot:{task}"], constants[task])
        gain = scores[name] - floor
        row: dict[str, Any] = {
            "name": name,
            "task": task,
            "method": spec.method,
            "rank": spec.rank if spec.is_low_rank else None,
            "accuracy": scores[name],
            "zero_shot": scores[f"zero-shot:{task}"],
            "best_constant": constants[task],
            "floor": floor,
            "gain": gain,
            "test_rows": used[task],
            "params": adapter.num_trainable_params,
            "bytes": (folder / "adapter.safetensors").stat().st_size,
            "path": str(folder),
        }
        if min_gain is not None:
            row["passed"] = gain >= min_gain
        rows.append(row)
    return rows


def results_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="held-out accuracy (multiple-choice scoring); gain: over the better of zero-shot and constant"
    )
    columns = (
        "adapter",
        "task",
        "accuracy",
        "zero-shot",
        "constant",
        "gain",
        "test rows",
        "trainable params",
        "file bytes",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("adapter", "task") else "right", no_wrap=True)
    for row in rows:
        if "error" in row:
            table.add_row(row["name"], row["task"], f"failed: {row['error']}", *[""] * 6)
            continue
        table.add_row(
            row["name"],
            row["task"],
            f"{row['accuracy']:.3f}",
            f"{row['zero_shot']:.3f}",
            f"{row['best_constant']:.3f}",
            f"{row['gain']:+.3f}" + ("" if row.get("passed", True) else " (short)"),
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
