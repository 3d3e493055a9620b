"""What a first GPU user relies on, checked on a CPU-only machine: a job or replica that asked for a
GPU fails in one line when it has none, instead of running on the CPU in float32 and reporting done;
vLLM compiles on a GPU and claims only the replica's share of its memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import ulpt
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


def _vllm_args(model: ulpt.BaseModel, on_cpu: bool, **config: Any) -> Any:
    pytest.importorskip("vllm", reason="the vllm extra is not installed (make test installs it)")
    from ulpt_serving.vllm_engine import engine_args

    assert model.path is not None
    return engine_args(ServeConfig(model=str(model.path), **config), model, on_cpu=on_cpu)


def test_vllm_compiles_on_a_gpu_although_ulpts_own_copy_of_the_model_is_on_the_cpu(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    model = tiny_models["llama"]
    assert model.device.type == "cpu"  # what a replica keeps beside vLLM
    assert _vllm_args(model, on_cpu=False, num_gpus=1).enforce_eager is False
    assert _vllm_args(model, on_cpu=True).enforce_eager is True


def test_vllm_replicas_that_split_a_gpu_each_claim_their_share(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    model = tiny_models["llama"]
    assert _vllm_args(model, on_cpu=False, num_gpus=1).gpu_memory_utilization == pytest.approx(0.9)
    assert _vllm_args(model, on_cpu=False, num_gpus=0.5).gpu_memory_utilization == pytest.approx(0.45)
    asked = _vllm_args(model, on_cpu=False, num_gpus=0.5, vllm_gpu_memory_utilization=0.3)
    assert asked.gpu_memory_utilization == pytest.approx(0.3)


def test_vllm_on_a_cpu_sizes_its_cache_instead_of_demanding_most_of_the_ram_free(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    from ulpt_serving.vllm_memory import kv_bytes_per_token

    model = tiny_models["llama"]
    args = _vllm_args(model, on_cpu=True, max_batch_size=4)
    per_token = kv_bytes_per_token(model.config, model.token_embeddings.dtype)
    # an explicit cache size is what makes vLLM's CPU worker skip its "0.9 of RAM free" start check
    assert args.kv_cache_memory_bytes == 4 * args.max_model_len * per_token
    assert _vllm_args(model, on_cpu=True, vllm_cpu_kv_cache_gib=0.5).kv_cache_memory_bytes == 1 << 29
    assert _vllm_args(model, on_cpu=False, num_gpus=1).kv_cache_memory_bytes is None  # a GPU: the share


def test_memory_vllm_cannot_have_is_refused_in_one_line_before_it_starts() -> None:
    from ulpt_serving.vllm_memory import check_free_memory

    with pytest.raises(UlptError, match=r"vLLM needs \d+\.\d GiB of RAM .* are available") as caught:
        check_free_memory(True, 1 << 60, 0.9)
    assert "\n" not in str(caught.value)
    check_free_memory(True, 1 << 20, 0.9)  # a MiB is there


def test_auto_dtype_skips_emulated_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 or V100 answers is_bf16_supported() True by emulation, which runs slower than float32."""
    from ulpt.models.precision import resolve_dtype

    def emulated_only(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated_only)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_float16_is_refused_for_training_in_one_line(tiny_model_dirs: dict[str, Path]) -> None:
    from ulpt.errors import SpecError
    from ulpt.jobspec import JobSpec
    from ulpt.training import PackedTrainer

    with pytest.raises(SpecError, match="^dtype float16 cannot train: without loss scaling"):
        JobSpec.from_dict({"base_model": "./m", "dataset": {"path": "d.jsonl"}, "dtype": "float16"})
    half = ulpt.load_base_model(str(tiny_model_dirs["llama"]), dtype="float16")
    with pytest.raises(SpecError, match="float16 cannot train"):
        PackedTrainer(half)
    assert half.generate([(None, "the food")], max_new_tokens=2)  # serving in float16 stays allowed


def test_shared_weights_keep_t5s_float32_modules_as_a_disk_load_does(
    tiny_model_dirs: dict[str, Path],
) -> None:
    from ulpt.models.shared import load_shared_base_model, pack_base_model

    folder = tiny_model_dirs["t5"]
    disk = ulpt.load_base_model(str(folder), dtype="float16")
    shared = load_shared_base_model(pack_base_model(folder, "float16"))
    dtypes = {name: p.dtype for name, p in disk.hf.named_parameters()}
    assert {d for name, d in dtypes.items() if ".wo." in name} == {torch.float32}  # transformers' rule
    assert {name: p.dtype for name, p in shared.hf.named_parameters()} == dtypes


def test_a_gpu_job_may_give_each_worker_a_fraction_of_a_gpu(tmp_path: Path) -> None:
    from ulpt.errors import SpecError
    from ulpt.jobspec import JobSpec
    from ulpt_jobs.driver import JobTarget, _trainer

    base = {"base_model": "./m", "dataset": {"path": "d.jsonl"}, "use_gpu": True}
    spec = JobSpec.from_dict({**base, "gpus_per_worker": 0.25, "num_workers": 4})
    target = JobTarget(None, "sqlite://", str(tmp_path), tmp_path)  # type: ignore[arg-type]  # not opened
    scaling = _trainer(target, "job", spec, 0, "driver").scaling_config
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1, "GPU": 0.25}
    assert JobSpec.from_dict(base).gpus_per_worker == 1.0
    with pytest.raises(SpecError, match="gpus_per_worker must be at most 1 or a whole number"):
        JobSpec.from_dict({**base, "gpus_per_worker": 1.5})


def test_a_vllm_replica_on_a_gpu_keeps_only_the_embedding_table_on_the_host(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    """vLLM holds the weights on the GPU; the replica needs its tokenizer and table, not a second copy."""
    full = tiny_models["llama"]
    assert full.path is not None
    table_only = ulpt.load_base_model(str(full.path), dtype="float32", embeddings_only=True)
    params = sum(p.numel() for p in table_only.hf.parameters())
    assert params < 0.75 * sum(p.numel() for p in full.hf.parameters())
    assert params <= full.token_embeddings.numel() + full.hidden_size  # the table and the final norm
    assert torch.equal(table_only.token_embeddings, full.token_embeddings)
    assert table_only.encode("the food was good") == full.encode("the food was good")
    assert table_only.config.max_position_embeddings == full.config.max_position_embeddings


def test_gpu_workers_load_straight_to_their_device_instead_of_through_the_head(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """Packing the model in the driver and putting it in the head's object store would cost about twice
    the model on an 8 GiB head pod, for workers that copy it to their GPU anyway."""
    from ulpt.jobspec import JobSpec
    from ulpt_jobs.driver import share_weights

    base = {"base_model": str(tiny_model_dirs["llama"]), "dataset": {"path": "d.jsonl"}, "num_workers": 4}
    assert share_weights(JobSpec.from_dict({**base, "use_gpu": True})) is None  # no Ray here: nothing put


def test_a_model_too_large_for_the_object_store_is_never_packed(
    tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ulpt.models import shared

    folder = tiny_model_dirs["llama"]
    assert shared.packed_nbytes(folder, "bfloat16") == shared.pack_base_model(folder, "bfloat16").nbytes

    def pack_nothing(*_: Any) -> None:
        raise AssertionError("the model was packed before its size was checked")

    monkeypatch.setattr(shared, "pack_base_model", pack_nothing)
    assert shared.put_base_model(folder, "bfloat16", free_bytes=shared.packed_nbytes(folder) / 4) is None
