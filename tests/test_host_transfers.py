"""Host-to-device list conversions per packed training step: one, at 64 fits as at 4.

On CUDA, `torch.tensor(python_list, device="cuda")` is a pageable copy that synchronizes the stream, so
one per forward chunk (or per fit) keeps the host from queuing chunk i+1 while chunk i runs. Without a
GPU the count is what can be checked: every host list that becomes a tensor passes through
`aten.lift_fresh`, and every value read back to the host (`.item()`, `bool(t)`: a sync on CUDA)
through `aten._local_scalar_dense`, which a dispatch mode counts during one steady-state step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ulpt
from tests.test_training import sentiment_rows
from ulpt.training import FitRequest, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit
from ulpt.training.packed import FitState


class CountListConversions(TorchDispatchMode):
    """Counts tensors made from host data (`torch.tensor(list)`, `as_tensor`, `new_tensor`)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.lift_fresh.default:
            self.count += 1
        elif func is torch.ops.aten._local_scalar_dense.default:  # `.item()`, `bool(t)`: a sync on CUDA
            self.reads += 1
        return func(*args, **(kwargs or {}))


def fits(model: ulpt.BaseModel, count: int) -> list[FitState]:
    methods = ["ulpt", "pt"]  # two stacks
    return [
        prepare_fit(
            model,
            FitRequest(
                f"fit{i}",
                ulpt.AdapterSpec(method=methods[i % 2], n_tokens=2 + i % 3, rank=2, seed=i),
                sentiment_rows(4, i),
                (),
                TrainConfig(steps=5, lr=0.05, batch_size=2, seed=i),
            ),
        )
        for i in range(count)
    ]


def conversions_per_step(model: ulpt.BaseModel, count: int) -> tuple[int, int, int]:
    """(list conversions, scalar reads back to the host, forward chunks) of one step after the first."""
    pack = fits(model, count)
    trainer = PackedTrainer(model, max_rows_per_forward=4)  # several chunks per step
    trainer.train_step(pack)  # fits join their stacks here (once per fit, not per step)
    forwards = 0

    def count_forward(*_: Any) -> None:
        nonlocal forwards
        forwards += 1

    hook = model.hf.register_forward_pre_hook(count_forward)
    try:
        with CountListConversions() as counter:
            trainer.train_step(pack)
    finally:
        hook.remove()
    return counter.count, counter.reads, forwards


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_a_packed_step_copies_host_lists_to_the_device_a_constant_few_times(
    tiny_models: dict[str, ulpt.BaseModel], family: str
) -> None:
    model = tiny_models[family]
    few, few_reads, few_chunks = conversions_per_step(model, 4)
    many, many_reads, many_chunks = conversions_per_step(model, 64)
    assert many_chunks > few_chunks >= 2  # more fits, more forward passes
    assert many == few == 1, (few, many)  # the step's one staged copy
    if family == "llama":  # its own causal mask: transformers reads no padding mask back per forward
        assert many_reads == few_reads == 0, (few_reads, many_reads)


class CountHostReads(TorchDispatchMode):
    """Counts device values read back by the host one scalar at a time (`.item()`, `int(t)`)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def host_traffic_while_sampling(model: ulpt.BaseModel, rows: int, steps: int) -> int:
    """Scalar reads and list copies while `rows` sampled rows (half seeded) decode `steps` tokens."""
    batch = [(None, f"the food was {word}") for word in ["good", "bad", "fine", "cold"] * (rows // 4)]
    params = [
        ulpt.SamplingParams(
            max_new_tokens=steps, temperature=0.8, top_p=0.9, seed=i if i % 2 else None, ignore_eos=True
        )
        for i in range(rows)
    ]
    with CountHostReads() as counter:
        generations = model.generate_batch(batch, params)
    assert all(len(g.token_ids) == steps for g in generations)
    return counter.count


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_sampled_rows_are_chosen_on_the_device_without_a_read_per_row(
    tiny_models: dict[str, ulpt.BaseModel], family: str
) -> None:
    model = tiny_models[family]
    few, many = host_traffic_while_sampling(model, 4, 5), host_traffic_while_sampling(model, 16, 5)
    assert many == few, (few, many)  # what is left is per forward pass (ids, transformers' mask checks)


def host_copies_per_checkpoint(model: ulpt.BaseModel, count: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """Device-to-host copies while one checkpoint of `count` fits (stacked and one unstacked) encodes."""
    from ulpt.training import checkpoint

    pack = fits(model, count)
    PackedTrainer(model, max_rows_per_forward=4).train_step(pack[1:])  # pack[0] never stacked
    copies = 0
    to_host = checkpoint.to_host

    def counted(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal copies
        copies += 1
        return to_host(tensor)

    monkeypatch.setattr(checkpoint, "to_host", counted)
    blob = checkpoint.encode({f.key: [f] for f in pack})
    assert set(checkpoint.decode(blob)) == {f.key for f in pack}
    return copies


def test_a_checkpoint_copies_each_part_to_the_host_once_for_the_whole_pack(
    tiny_models: dict[str, ulpt.BaseModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_models["llama"]
    layouts = 6  # ulpt and pt at 2, 3 and 4 prompt tokens
    few, many = (host_copies_per_checkpoint(model, n, monkeypatch) for n in (8, 64))
    assert few == many == 4 * layouts  # parameters, best parameters and the two moments, per layout


class CountOps(TorchDispatchMode):
    """Counts every tensor op (each a kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_to_assemble_prefixes(model: ulpt.BaseModel, rows: int) -> int:
    from ulpt.models.prefix import prefix_batch

    adapters = [
        ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=n, seed=n), model.hidden_size) for n in (3, 5, 8)
    ]
    cached = model.cache_prompts(adapters)
    prefixes = [cached[i % 3] for i in range(rows)]  # three prompt lengths, however many rows
    with CountOps() as counter:
        prefix_batch(model.hf, prefixes, model.pad_multiple)
    return counter.count


def test_a_batch_assembles_its_cached_prefixes_per_length_not_per_row_and_layer(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    model = tiny_models["llama"]
    assert ops_to_assemble_prefixes(model, 4) == ops_to_assemble_prefixes(model, 48)
