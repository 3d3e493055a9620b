"""`benchmarks/gpu.py --device cpu --quick` runs the GPU benchmark's own code on a tiny model here, so the
script is known to work before it meets a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ulpt
from ulpt.training import FitRequest, TrainConfig
from ulpt.training.api import prepare_fit

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


def _gpu_flops() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_flops
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_flops


@pytest.mark.parametrize(
    ("name", "dtype", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),  # SXM
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.5),
        ("NVIDIA H100 NVL", torch.bfloat16, 835.5),
        ("NVIDIA H100 PCIe", torch.float32, 51.2),  # not the bf16 peak
        ("NVIDIA A10", torch.bfloat16, 125.0),  # not the A100's
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA L4", torch.bfloat16, 121.0),  # not the L40S's
        ("NVIDIA H100", torch.bfloat16, None),  # which H100 is unknown: no guess
        ("Some Accelerator", torch.bfloat16, None),
    ],
)
def test_the_peak_is_the_exact_devices_in_the_dtype_that_runs(
    name: str, dtype: torch.dtype, peak: float
) -> None:
    assert _gpu_flops().peak_tflops(name, dtype) == peak


def test_training_flops_leave_out_the_embedding_lookup_and_count_the_head_on_targets_only(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    model = tiny_models["llama"]
    spec = ulpt.AdapterSpec(n_tokens=4, rank=2, seed=1)
    rows = [
        {"input": "the food was good", "target": "yes"},
        {"input": "the room was cold and dark", "target": "no"},
    ]
    fit = prepare_fit(model, FitRequest("f", spec, rows, (), TrainConfig(steps=3, batch_size=2)))
    vocab, hidden = model.token_embeddings.shape
    every = sum(p.numel() for p in model.hf.parameters())
    tokens = sum(4 + len(r.input_ids) + len(r.target_ids) for r in fit.train) / 2  # mean row length
    targets = sum(len(r.target_ids) for r in fit.train) / 2
    drawn = 2 * 3
    body = every - vocab * hidden  # the tiny Llama ties its head to the table: one matrix, listed once
    expected = drawn * 4 * (body * tokens + vocab * hidden * targets)
    assert _gpu_flops().training_flops(model, [fit]) == pytest.approx(expected)
    assert expected < drawn * 4 * every * tokens  # what the old count (every parameter, every token) said


def test_the_gpu_check_runs_green_on_a_cpu_at_a_small_size(tmp_path: Path) -> None:
    """`benchmarks/gpu_check.py --device cpu`: the device check's own code, so it is known to run before
    it meets a GPU (where it also counts syncs and measures MFU); it must not need Ray or vLLM."""
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["imported_ray_or_vllm"] == []
    assert {"torch", "transformers", "device"} <= set(report)
    assert [[r["fits"] for r in t["runs"]] for t in report["training"]] == [[1, 4, 16], [1, 4]]
    assert all(r["failed"] == 0 and r["fits_per_s"] > 0 for t in report["training"] for r in t["runs"])
    assert all(check["greedy_steps"] == 32 for check in report["mixed_vs_solo_bf16"])
