"""`benchmarks/control_plane.py` at its smallest: a real job planned, claimed, registered and marked done by
several worker processes against a real PostgreSQL, so the benchmark is known to work before a long run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.service
def test_smallest_run_finishes_every_fit_and_reports_each_stage(tmp_path: Path) -> None:
    out = tmp_path / "control_plane.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/control_plane.py", "--fits", "120", "--workers", "3", "--batch", "16",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["fits"] == results["plan"]["fits"] == 120  # every planned fit ended done
    assert set(results["stages"]) == {"claim", "adapters", "register", "mark_done"}
    # each worker's last claim finds nothing left: at least ceil(120 / 16) + 3 claims in all
    assert results["claim_latency_ms"]["claims"] >= 8 + 3
    assert results["end_to_end_fits_per_s"] > 0 and results["plan"]["bytes_per_fit"] > 0
    assert "end to end (goal >= 1,000)" in done.stdout
