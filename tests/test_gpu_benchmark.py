"""`benchmarks/gpu.py --device cpu --quick` runs the GPU benchmark's own code on a tiny model here, so the
script is known to work before it meets a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_cpu_run_trains_packed_fits_and_serves_mixed_batches(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["dtype"] == "float32" and results["quick"] is True  # "auto" is float32 on a CPU

    runs = results["training"]["runs"]
    assert [r["fits"] for r in runs] == [1, 4, 16]
    assert all(r["failed"] == 0 and r["fits_per_hour"] > 0 and r["achieved_tflops"] > 0 for r in runs)
    # Token counts grow with the fits (each fit's own rows), and K = 1 is the baseline of the ratio.
    assert runs[0]["tokens"] < runs[1]["tokens"] < runs[2]["tokens"]
    assert runs[0]["vs_one_at_a_time"] == 1.0
    assert runs[-1]["vs_one_at_a_time"] == round(runs[-1]["fits_per_hour"] / runs[0]["fits_per_hour"], 2)

    serving = results["serving"]["runs"]
    assert [r["adapters"] for r in serving] == [8, 32]
    for run in serving:
        # EOS is off: every mode generates exactly requests x max_tokens, so the rates compare equal work.
        assert set(run["tokens"].values()) == {run["grouped_requests"] * results["serving"]["max_tokens"]}
        assert all(rate > 0 for rate in run["tokens_per_s"].values())
    assert "(a) packed training" in done.stdout and "(b) serving engine" in done.stdout
