"""Hostile adapter files: a few megabytes that claim a huge rank and hidden size are refused with one
line before the projection P is regenerated, and the loading process's peak memory barely moves.

The load runs in a fresh interpreter so its peak resident set (`ru_maxrss`) measures that load alone,
not whatever the test session allocated before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save

import ulpt
from tests.reliability_fixtures import ReliabilityRun
from ulpt.errors import AdapterFormatError

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]
RANK, HIDDEN = 65_535, 1_048_575
"""P would be RANK x HIDDEN float32: 275 GB, from a file of about 8 MB."""
PEAK_LIMIT_MIB = 64

_PROBE = """
import json, resource, sys
from ulpt.adapters import Adapter
from ulpt.errors import UlptError
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Adapter.from_bytes(data)
    outcome = "loaded"
except UlptError as exc:
    outcome = "refused: " + str(exc)
except BaseException as exc:
    outcome = f"crashed: {type(exc).__name__}: {exc}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "peak_growth_kib": after - before}))
"""


def _hostile_config(**changes: Any) -> dict[str, Any]:
    config = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=1, rank=2, seed=1), 8).config()
    config.update(rank=RANK, hidden_size=HIDDEN, **changes)
    return config


def _hostile_blob() -> bytes:
    tensors = {
        "ulpt_z": torch.zeros(1, RANK),
        "ulpt_scale": torch.ones(HIDDEN),
        "ulpt_shift": torch.zeros(HIDDEN),
    }
    return save(tensors, metadata={"adapter_config": json.dumps(_hostile_config())})


def test_a_small_file_claiming_a_huge_projection_is_refused_with_little_memory(
    tmp_path: Path, reliability: ReliabilityRun
) -> None:
    blob = tmp_path / "hostile.safetensors"
    blob.write_bytes(_hostile_blob())
    env = {"PYTHONPATH": f"{ROOT / 'platform'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(blob)], capture_output=True, text=True, env=env, timeout=300
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("refused: adapter would need"), result
    assert "\n" not in result["outcome"]
    assert result["peak_growth_kib"] < PEAK_LIMIT_MIB * 1024, result
    reliability.record(
        "hostile_adapter_files",
        {
            "file_mib": round(blob.stat().st_size / 2**20, 1),
            "claimed_projection_gb": round(RANK * HIDDEN * 4 / 1e9),
            "peak_rss_growth_mib": round(result["peak_growth_kib"] / 1024, 1),
            "outcome": result["outcome"],
        },
    )


def test_the_memory_bound_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    data = ulpt.Adapter.create(ulpt.AdapterSpec(rank=4, seed=2), 256).to_bytes()
    assert ulpt.Adapter.from_bytes(data).spec.rank == 4
    monkeypatch.setenv("ULPT_MAX_ADAPTER_BYTES", "1000")
    with pytest.raises(AdapterFormatError, match="above the 0 MiB bound"):
        ulpt.Adapter.from_bytes(data)


def test_a_missing_projection_record_does_not_skip_the_fingerprint_check(tmp_path: Path) -> None:
    folder = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32).save(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(projection=None, seed=6)  # another seed: another P, which nothing would notice
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="no projection record"):
        ulpt.Adapter.load(folder)


def test_a_header_that_disagrees_with_the_file_length_is_refused(tmp_path: Path) -> None:
    data = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32).to_bytes()
    with pytest.raises(AdapterFormatError, match="bytes, but their header describes"):
        ulpt.Adapter.from_bytes(data + b"\x00" * 4096)
    with pytest.raises(AdapterFormatError):
        ulpt.Adapter.from_bytes(data[:-4])
    folder = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32).save(tmp_path)
    with open(folder / "adapter.safetensors", "ab") as weights:
        weights.write(b"\x00" * (2 << 20))
    with pytest.raises(AdapterFormatError, match="not a valid safetensors file for its config"):
        ulpt.Adapter.load(folder)
