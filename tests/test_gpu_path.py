"""What a first GPU user relies on, checked on a CPU-only machine: a job or replica that asked for a
GPU fails in one line when it has none, instead of running on the CPU in float32 and reporting done."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ulpt.errors import UlptError
from ulpt.models.precision import require_cuda
from ulpt_serving.config import ServeConfig

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@needs_no_gpu
def test_asking_for_a_gpu_without_cuda_is_a_one_line_error() -> None:
    for device in (torch.device("cpu"), torch.device("cuda")):  # what Ray Train answers, or the asked one
        with pytest.raises(UlptError, match="use_gpu: true asks for a GPU") as caught:
            require_cuda(device, "use_gpu: true")
        assert "\n" not in str(caught.value) and f"torch {torch.__version__}" in str(caught.value)


def test_a_job_without_use_gpu_stays_on_the_cpu() -> None:
    from ulpt_jobs.worker import worker_device

    assert worker_device(False) == torch.device("cpu")


@needs_no_gpu
def test_a_replica_that_reserved_a_gpu_does_not_serve_on_the_cpu(tiny_model_dirs: dict[str, Path]) -> None:
    from ulpt_serving.app import default_model

    config = ServeConfig(model=str(tiny_model_dirs["llama"]), num_gpus=0.5, engine="native")
    with pytest.raises(UlptError, match=r"num_gpus=0\.5 asks for a GPU"):
        default_model(config)
