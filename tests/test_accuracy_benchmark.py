"""`benchmarks/accuracy.py --smoke` runs the whole accuracy pipeline on a tiny model in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ulpt

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "accuracy.py"
CONFIGS = {
    "PT", "DPT r=8", "LoPT-1 r=4", "LoPT-2 r=4", "ULPT r=2", "ULPT r=16", "ULPT r=64",
    "ULPT r=2 no shift", "ULPT r=2 no scale", "ULPT r=2 no shift/scale", "PT n=2",
}  # fmt: skip


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_smoke_run_writes_table_json_plots_and_document(tmp_path: Path) -> None:
    doc = tmp_path / "accuracy.md"
    run("--smoke", "--out", str(tmp_path), "--doc", str(doc))
    data = json.loads((tmp_path / "accuracy.json").read_text())

    assert len(data["tasks"]) == data["settings"]["n_tasks"] == 2
    assert {r["task"] for r in data["screening"]} >= set(data["tasks"])
    assert set(data["chosen_lr"]) == CONFIGS
    assert all(lr in data["settings"]["lrs"] for lr in data["chosen_lr"].values())
    hidden = data["machine"]["hidden_size"]
    for task in data["tasks"]:
        assert 0 <= data["zero_shot"][task] <= 1
        assert set(data["results"][task]) == CONFIGS
        for config in data["configs"]:
            result = data["results"][task][config["name"]]
            assert len(result["test_accuracy"]) == data["settings"]["seeds"]
            assert all(0 <= a <= 1 for a in result["test_accuracy"])
            fields = {k: config[k] for k in ("method", "n_tokens", "rank", "use_shift", "use_scale")}
            assert result["params"] == ulpt.AdapterSpec(**fields).num_trainable_params(hidden)
            assert len(data["curves"][task][config["name"]]) == data["settings"]["steps"]
    timing = data["timing"]
    assert timing["fits"] == len(CONFIGS) * (data["settings"]["seeds"] - 1)
    assert timing["packed_seconds_per_step"] > 0 and timing["speedup"] > 0
    assert {"ablation", "budget", "ULPT r=2", "ULPT r=64"} <= set(data["headline"])

    for name in ("accuracy_vs_params.png", "accuracy_curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = doc.read_text()
    assert "smoke run" in text
    assert all(f"| {name} |" in text for name in CONFIGS)
    assert "r=64 matches or beats PT" in text

    # The document is a function of the JSON alone: re-rendering gives the same text.
    doc.unlink()
    run("--report-only", "--out", str(tmp_path), "--doc", str(doc))
    assert doc.read_text() == text
