"""Training and evaluation keep every tensor on the model's device and the right dtype, without a GPU.

Device: the model stays on the CPU while `torch.device("meta")` makes meta the DEFAULT device, so a
tensor built without `device=` (the classic "works on CPU, breaks on CUDA" mistake) lands on meta and
the first op that meets a model tensor raises, or a host copy into a device tensor fails. The real
CPU numbers still flow, so results are compared with a run outside the context.

Dtype: the tiny models load in bfloat16; adapters must stay float32 master weights, losses float32,
and a mixed batch must still equal each row alone (within bfloat16's precision).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import ulpt
from tests.test_training import sentiment_rows
from ulpt.errors import SpecError
from ulpt.jobspec import JobSpec
from ulpt.training import FitRequest, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit
from ulpt.training.packed import FitState


@contextlib.contextmanager
def default_device_elsewhere() -> Iterator[None]:
    """Tensors made without an explicit device go to meta, away from the (CPU) model."""
    with torch.device("meta"):
        yield


def _fits(model: ulpt.BaseModel) -> list[FitState]:
    methods = [("ulpt", 3, 2), ("pt", 2, 3), ("lopt2", 4, 2)]
    return [
        prepare_fit(
            model,
            FitRequest(
                f"fit{i}",
                ulpt.AdapterSpec(method=method, n_tokens=n, rank=2, seed=i),
                sentiment_rows(12, i),
                sentiment_rows(6, 20 + i),
                TrainConfig(steps=4, lr=0.05, batch_size=batch, seed=i),
            ),
        )
        for i, (method, n, batch) in enumerate(methods)
    ]


def test_packed_training_step_builds_its_tensors_on_the_models_device(tiny_model: ulpt.BaseModel) -> None:
    reference, checked = _fits(tiny_model), _fits(tiny_model)
    outside = PackedTrainer(tiny_model, max_rows_per_forward=4)
    inside = PackedTrainer(tiny_model, max_rows_per_forward=4)
    expected = [outside.train_step(reference) for _ in range(2)]
    with default_device_elsewhere():  # the fits join their stacks, grow them and step, all in here
        got = [inside.train_step(checked) for _ in range(2)]
    for step in range(2):
        assert got[step] == pytest.approx(expected[step], rel=1e-5)
    for a, b in zip(reference, checked):
        torch.testing.assert_close(a.adapter.prompt_embeddings(), b.adapter.prompt_embeddings())


def test_evaluation_and_scoring_build_their_tensors_on_the_models_device(tiny_model: ulpt.BaseModel) -> None:
    fits = _fits(tiny_model)
    trainer = PackedTrainer(tiny_model, max_rows_per_forward=5)
    rows = [(fit.adapter, text) for fit, text in zip(fits, ["the movie was", "one plus two", "yes"])]
    inputs = [tiny_model.encode(text) for _, text in rows]
    targets = [tiny_model.encode_target(text, "positive") for _, text in rows]
    continuations = [
        [t, tiny_model.encode_target(text, "no", eos=False)] for t, (_, text) in zip(targets, rows)
    ]
    prompts = [a for a, _ in rows]

    def scores() -> tuple[object, ...]:
        with torch.no_grad():
            return (
                tiny_model.target_logprobs(prompts, inputs, targets),
                tiny_model.continuation_logprobs(prompts, inputs, continuations),
                tiny_model.score(rows),
            )

    # evaluate: multiple-choice labels, and cached prefixes on the decoder-only model
    expected, expected_scores = trainer.evaluate(fits), scores()
    with default_device_elsewhere():
        got, got_scores = trainer.evaluate(fits), scores()
    assert got.keys() == expected.keys()
    for key, metrics in expected.items():
        assert got[key] == pytest.approx(metrics, rel=1e-5)
    torch.testing.assert_close(got_scores, expected_scores)


@pytest.fixture(scope="module")
def bf16_models(tiny_model_dirs: dict[str, Path]) -> dict[str, ulpt.BaseModel]:
    return {family: ulpt.load_base_model(path, dtype="bfloat16") for family, path in tiny_model_dirs.items()}


@pytest.fixture(params=["llama", "t5"])
def bf16_model(request: pytest.FixtureRequest, bf16_models: dict[str, ulpt.BaseModel]) -> ulpt.BaseModel:
    return bf16_models[request.param]


def test_bf16_base_trains_float32_adapters(bf16_model: ulpt.BaseModel) -> None:
    assert bf16_model.token_embeddings.dtype == torch.bfloat16
    fits = _fits(bf16_model)
    before = [fit.adapter.prompt_embeddings().detach().clone() for fit in fits]
    trainer = PackedTrainer(bf16_model, max_rows_per_forward=4)
    logp, _ = bf16_model.target_logprobs(
        [fits[0].adapter], [fits[0].train[0].input_ids], [fits[0].train[0].target_ids]
    )
    assert logp.dtype == torch.float32
    logp.sum().backward()
    grads = [p.grad for p in fits[0].adapter.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and bool(g.abs().sum() > 0) for g in grads)
    fits[0].adapter.zero_grad(set_to_none=True)
    trainer.run(fits)
    assert [fit.status for fit in fits] == ["done"] * 3, [fit.error for fit in fits]
    for fit, start in zip(fits, before):
        assert all(p.dtype == torch.float32 for p in fit.adapter.parameters())
        assert all(torch.isfinite(torch.tensor(fit.train_losses)))
        assert not torch.equal(
            fit.adapter.prompt_embeddings().detach(), start
        )  # small updates not rounded away
        assert fit.history and all(torch.isfinite(torch.tensor(h["eval_loss"])) for h in fit.history)


def test_bf16_mixed_batch_equals_each_row_alone(bf16_model: ulpt.BaseModel) -> None:
    fits = _fits(bf16_model)
    examples = [ex for fit in fits for ex in fit.train[:3]]
    adapters = [fit.adapter for fit in fits for _ in range(3)]
    with torch.no_grad():
        logp, mask = bf16_model.target_logprobs(
            adapters, [ex.input_ids for ex in examples], [ex.target_ids for ex in examples]
        )
        alone = [
            bf16_model.target_logprobs([a], [ex.input_ids], [ex.target_ids])[0].sum()
            for a, ex in zip(adapters, examples)
        ]
    # bf16 keeps ~3 significant digits; padding changes the reduction order, not the result beyond that.
    torch.testing.assert_close(logp.sum(1), torch.stack(alone), atol=0.05, rtol=0.02)
    assert mask.sum().item() == sum(len(ex.target_ids) for ex in examples)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("auto", torch.float32), ("float16", torch.float16), (torch.bfloat16, torch.bfloat16)],
)
def test_load_base_model_reads_dtype_names(
    tiny_model_dirs: dict[str, Path], dtype: str | torch.dtype, expected: torch.dtype
) -> None:
    model = ulpt.load_base_model(tiny_model_dirs["llama"], dtype=dtype, device="cpu")
    assert model.token_embeddings.dtype == expected


def test_bad_dtype_or_device_is_refused_in_one_line(tiny_model_dirs: dict[str, Path]) -> None:
    with pytest.raises(
        SpecError, match=r"^dtype must be one of auto, float32, bfloat16, float16, got 'fp8'$"
    ):
        ulpt.load_base_model(tiny_model_dirs["llama"], dtype="fp8")
    with pytest.raises(SpecError, match=r"^dtype must be one of float32, bfloat16, float16, got torch.int8$"):
        ulpt.load_base_model(tiny_model_dirs["llama"], dtype=torch.int8)
    with pytest.raises(SpecError, match=r"^device must be auto, cpu, cuda or cuda:N, got 'gpu0'$"):
        ulpt.load_base_model(tiny_model_dirs["llama"], device="gpu0")


def test_job_spec_carries_a_checked_dtype() -> None:
    base = {"base_model": "./m", "dataset": {"path": "d.jsonl"}}
    assert JobSpec.from_dict(base).dtype == "auto"
    spec = JobSpec.from_dict({**base, "dtype": "bfloat16"})
    assert JobSpec.from_dict(spec.to_dict()).dtype == "bfloat16"
    with pytest.raises(SpecError, match=r"^dtype must be one of auto, float32, bfloat16, got 'half'$"):
        JobSpec.from_dict({**base, "dtype": "half"})


def test_ulpt_train_dtype_flag_sets_the_spec_field() -> None:
    from ulpt.cli.train import build_spec

    spec = build_spec(None, {"base_model": "./m", "dtype": "bfloat16"}, ["d.jsonl"], None)
    assert spec.dtype == "bfloat16"


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_the_serving_decode_loop_builds_its_tensors_on_the_models_device(
    tiny_model_dirs: dict[str, Path], family: str
) -> None:
    """A mixed batch (base rows, adapter rows, a stop string) decodes the same with meta as the default
    device: the engine, the adapter cache's prompts and prefix keys/values, and the sampler all place
    their tensors explicitly."""
    from ulpt_serving import BatchItem, Engine, ServeConfig

    model = ulpt.load_base_model(tiny_model_dirs[family])
    engine = Engine.create(model, ServeConfig(model=str(tiny_model_dirs[family])))
    adapters = {
        f"a{i}": ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=3, rank=2, seed=i), model.hidden_size)
        for i in range(2)
    }

    def batch() -> list[BatchItem]:
        rows = [BatchItem("the movie", ulpt.SamplingParams(max_new_tokens=5))]
        for key, adapter in adapters.items():
            cached = engine.cache.get_sync(key, lambda a=adapter: a)
            rows.append(
                BatchItem("one two", ulpt.SamplingParams(max_new_tokens=4, stop=("zz",)), key, cached)
            )
        return rows

    expected = [g.token_ids for g in engine.generate(batch())]
    with default_device_elsewhere():
        got = [g.token_ids for g in engine.generate(batch())]
    assert got == expected and all(expected)
