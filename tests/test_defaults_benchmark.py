"""`benchmarks/defaults.py --smoke`: defaults vs sweep vs paper on a tiny model, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ulpt
from ulpt.training.defaults import default_lr

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "defaults.py"


def test_smoke_run_compares_the_three_arms_and_keeps_the_rest_of_the_document(tmp_path: Path) -> None:
    doc = tmp_path / "accuracy.md"
    doc.write_text("# Accuracy\n\nwritten by the accuracy benchmark\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--doc", str(doc)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "defaults.json").read_text())
    settings = data["settings"]
    results = data["results"]
    expected = len(settings["tasks"]) * len(settings["methods"]) * 3 * settings["seeds"]
    assert len(results) == expected  # one kept adapter per fit: a sweep registers only its winner
    for r in results:
        spec = ulpt.AdapterSpec(method=r["method"], n_tokens=settings["n_tokens"], rank=2)
        if r["arm"] == "measured":
            assert r["lr"] == default_lr(spec, "measured")
        elif r["arm"] == "paper":
            assert r["lr"] == default_lr(spec, "paper")
        else:
            assert r["lr"] in (0.03, 0.1, 0.3)
        assert r["learned"] in (0.0, 1.0) and r["learned_on_test"] in (0.0, 1.0)
        assert 0.0 <= r["test_accuracy"] <= 1.0
    assert set(data["zero_shot"]) == set(settings["tasks"])

    text = doc.read_text()
    assert text.startswith("# Accuracy\n\nwritten by the accuracy benchmark\n")
    assert text.count("<!-- defaults:begin -->") == 1 and "| ulpt | sweep |" in text
    subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--doc", str(doc)],
        check=True, capture_output=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    again = doc.read_text()
    assert again.count("<!-- defaults:begin -->") == 1  # replaced, not appended twice
    assert again.startswith("# Accuracy\n\nwritten by the accuracy benchmark\n")
