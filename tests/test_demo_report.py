"""The demo's verdict: each adapter must beat the better of zero-shot and the best constant answer."""

from __future__ import annotations

import json
from pathlib import Path

import ulpt
from ulpt.demo_report import result_rows, write_results


def test_the_floor_is_the_better_of_zero_shot_and_the_best_constant(tmp_path: Path) -> None:
    spec = ulpt.AdapterSpec(method="ulpt", n_tokens=2, rank=2, seed=0)
    adapters = {name: ulpt.Adapter.create(spec, 8) for name in ("a", "b", "c")}
    fits = [("a", "t1", spec), ("b", "t2", spec), ("c", "t2", spec), ("lost", "t1", spec)]
    scores = {"a": 0.45, "b": 0.70, "c": 0.75, "zero-shot:t1": 0.30, "zero-shot:t2": 0.10}
    constants = {"t1": 0.20, "t2": 0.62}  # t2: a constant answer beats zero-shot
    rows = result_rows(
        fits, adapters, scores, constants, {"t1": 100, "t2": 100}, {"lost": "boom"}, tmp_path, min_gain=0.1
    )
    by_name = {row["name"]: row for row in rows}
    assert by_name["a"]["floor"] == 0.30 and by_name["a"]["passed"] is True  # +0.15 over zero-shot
    assert by_name["b"]["floor"] == 0.62 and by_name["b"]["passed"] is False  # +0.08 over the constant
    assert by_name["c"]["passed"] is True
    assert by_name["lost"] == {"name": "lost", "task": "t1", "error": "boom"}
    assert (tmp_path / "a" / "adapter.safetensors").is_file()

    written = json.loads(write_results(tmp_path / "results.json", rows, {"smoke": False}).read_text())
    assert [row.get("passed") for row in written["adapters"]] == [True, False, True, None]

    smoke = result_rows(fits[:1], adapters, scores, constants, {"t1": 8}, {}, tmp_path, min_gain=None)
    assert "passed" not in smoke[0]  # the smoke checks that every phase runs, not what it learns
