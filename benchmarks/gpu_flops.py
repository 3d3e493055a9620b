"""Achieved FLOP/s of packed training: the work that actually runs, against the exact device's peak.

Per token of a row, the frozen base costs 2 FLOPs per non-embedding parameter forward and 2 more
backward (to the activations: the frozen weights get no gradient). The embedding table is a lookup,
not a matmul, so it is not counted; the LM head (vocab x hidden) runs only on the positions whose
logits are kept, which in teacher-forced training are the target positions, so it is counted there
and nowhere else. Counting the table and the head on every position overstated decoder-only
SmolLM2 training by about a fifth. Attention's own score FLOPs (about 4 x layers x length x hidden
per token) are left out, as in the usual 6N rule: for rows of ~50 tokens they are a few percent.

Peaks are dense (no sparsity) tensor-core figures from the vendors' datasheets, per exact device
and dtype: an H100 PCIe is not an H100 SXM, and float32 (TF32 off, PyTorch's default for matmuls)
runs at a fraction of bf16. An unknown device or dtype gets no peak rather than a guess.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch

PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    # (every substring the device name must hold, {dtype: dense TFLOP/s}); most specific first
    (("H200",), {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}),
    (("H100", "NVL"), {"bfloat16": 835.5, "float16": 835.5, "float32": 60.0}),
    (("H100", "PCIe"), {"bfloat16": 756.5, "float16": 756.5, "float32": 51.2}),
    (("H100", "HBM3"), {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}),  # SXM5: "H100 80GB HBM3"
    (("H100", "SXM"), {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}),
    (("A100",), {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    (("L40S",), {"bfloat16": 362.1, "float16": 362.1, "float32": 91.6}),
    (("L4",), {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3}),
    (("A10",), {"bfloat16": 125.0, "float16": 125.0, "float32": 31.2}),
)


def peak_tflops(device_name: str, dtype: torch.dtype | str) -> float | None:
    """The dense peak of the named device in `dtype`, or None when this table does not know it."""
    key = str(dtype).removeprefix("torch.")
    tokens = device_name.replace("-", " ").split()
    for needles, peaks in PEAK_TFLOPS:
        if all(any(n == t or (n in ("HBM3", "SXM") and t.startswith(n)) for t in tokens) for n in needles):
            return peaks.get(key)
    return None


def device_name(device: torch.device) -> str:
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def flop_shape(model: Any) -> tuple[int, int]:
    """(body parameters: everything but the embedding table and the LM head, head parameters)."""
    embedding = model.hf.get_input_embeddings().weight
    head = model.hf.get_output_embeddings().weight
    total = sum(p.numel() for p in model.hf.parameters())  # a tied head is the table, listed once
    tied = head.data_ptr() == embedding.data_ptr()
    body = total - embedding.numel() - (0 if tied else head.numel())
    return body, head.numel()


def training_flops(model: Any, fits: Sequence[Any]) -> float:
    """FLOPs of training `fits` (prepared `FitState`s) to their last step: per drawn row, 4 x body
    parameters x (prompt + input + target tokens) plus 4 x head parameters x target tokens."""
    body, head = flop_shape(model)
    total = 0.0
    for fit in fits:
        rows = fit.train
        tokens = statistics.mean(
            fit.adapter.spec.n_tokens + len(r.input_ids) + len(r.target_ids) for r in rows
        )
        targets = statistics.mean(len(r.target_ids) for r in rows)
        drawn = fit.config.batch_size * fit.config.steps
        total += drawn * 4 * (body * tokens + head * targets)
    return total
