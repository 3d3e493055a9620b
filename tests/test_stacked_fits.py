"""Stacked fits: one vectorized AdamW over same-shaped fits equals each fit stepped on its own.

The reference is the textbook loop one fit at a time: `torch.optim.AdamW`, `clip_grad_norm_` and
`LambdaLR(warmup, linear decay)`. Fits in one stack carry different learning rates, schedules,
clipping, weight decay and batch sizes, so a shared norm, lr or step count would show. fp32
tolerances are float noise (batched vs single matmuls, then Adam's normalized steps), far below
what any per-fit mix-up moves.
"""

from __future__ import annotations

import pytest
import torch

import ulpt
from tests.test_training import sentiment_rows
from ulpt.adapters.spec import METHODS
from ulpt.training import FitRequest, FitState, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit
from ulpt.training.optim import clip_coefficients, lr_factor

CONFIGS = [  # one stack, every per-fit hyperparameter different
    {"lr": 0.05, "steps": 8, "batch_size": 2, "warmup_steps": 2, "max_grad_norm": 0.05, "seed": 1},
    {"lr": 0.2, "steps": 6, "batch_size": 3, "warmup_steps": 0, "max_grad_norm": None, "weight_decay": 0.1},
    {"lr": 0.01, "steps": 10, "batch_size": 1, "warmup_steps": 5, "max_grad_norm": 1.0, "seed": 4},
]


def request(key: str, data_seed: int, method: str = "ulpt", **config: object) -> FitRequest:
    spec = ulpt.AdapterSpec(method=method, n_tokens=3, rank=2, seed=data_seed)
    return FitRequest(key, spec, sentiment_rows(12, data_seed), (), TrainConfig(**config))  # type: ignore[arg-type]


def textbook(model: ulpt.BaseModel, req: FitRequest) -> tuple[list[float], torch.Tensor]:
    """The fit alone with its own torch optimizer, clipping and scheduler: (loss curve, final prompt)."""
    fit = prepare_fit(model, req)  # its rows, in its own seeded order
    params, config = list(fit.adapter.parameters()), req.config
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup, total = config.warmup, config.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
    )
    curve = []
    for _ in range(config.steps):
        batch = fit.next_batch()
        logp, mask = model.target_logprobs(
            [fit.adapter] * len(batch), [ex.input_ids for ex in batch], [ex.target_ids for ex in batch]
        )
        loss = (-logp.sum(1) / mask.sum(1)).mean()
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append(loss.item())
    return curve, fit.adapter.prompt_embeddings().detach()


def run_packed(model: ulpt.BaseModel, fits: list[FitState], rows_per_forward: int = 5) -> PackedTrainer:
    trainer = PackedTrainer(model, max_rows_per_forward=rows_per_forward)
    trainer.train_step(fits)
    assert len({id(f.slot[0]) for f in fits if f.slot is not None}) == 1, "the fits share one stack"
    trainer.run(fits)
    return trainer


@pytest.mark.parametrize("method", METHODS)
def test_each_stacked_fit_follows_its_own_textbook_adamw(tiny_model: ulpt.BaseModel, method: str) -> None:
    requests = [request(f"fit{i}", 10 + i, method, **config) for i, config in enumerate(CONFIGS)]
    fits = [prepare_fit(tiny_model, r) for r in requests]
    run_packed(tiny_model, fits)
    for fit, req in zip(fits, requests):
        curve, prompt = textbook(tiny_model, req)
        assert fit.status == "done" and fit.step == req.config.steps
        torch.testing.assert_close(torch.tensor(fit.train_losses), torch.tensor(curve), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fit.adapter.prompt_embeddings(), prompt, atol=1e-4, rtol=1e-3)


def test_schedule_and_clipping_are_per_fit() -> None:
    warmup, total = torch.tensor([0.0, 2.0, 5.0]), torch.tensor([6.0, 8.0, 10.0])
    for step in range(10):
        expected = [
            (s + 1) / w if s < w else max(0.0, (t - s) / max(1, t - w))
            for s, w, t in zip([step] * 3, warmup.tolist(), total.tolist())
        ]
        got = lr_factor(torch.full((3,), float(step)), warmup, total)
        torch.testing.assert_close(got, torch.tensor(expected))
    grad = torch.tensor([[3.0, 4.0], [0.3, 0.4], [30.0, 40.0]])  # norms 5, 0.5, 50
    coef = clip_coefficients(grad, torch.tensor([1.0, 1.0, float("inf")]))
    torch.testing.assert_close(coef, torch.tensor([1 / 5, 1.0, 1.0]), rtol=1e-5, atol=0)


def test_fits_join_and_leave_the_stack_mid_run(tiny_models: dict[str, ulpt.BaseModel]) -> None:
    model = tiny_models["llama"]
    long, short, late = (
        request("long", 1, lr=0.05, steps=9),
        request("short", 2, lr=0.1, steps=3, batch_size=3),
        request("late", 3, lr=0.02, steps=4, batch_size=2),
    )
    trainer = PackedTrainer(model, max_rows_per_forward=4)
    pack = [prepare_fit(model, long)]
    for _ in range(2):
        trainer.advance(pack)
    pack.append(prepare_fit(model, short))  # joins the stack of a fit two steps in
    trainer.advance(pack)
    finished = pack[1]
    assert finished.slot is not None and pack[0].slot is not None and finished.slot[0] is pack[0].slot[0]
    freed = finished.slot[1]
    while finished.status == "running":
        trainer.advance(pack)
    assert finished.slot is None and pack[0].slot is not None
    kept = finished.adapter.prompt_embeddings().detach().clone()
    pack.append(prepare_fit(model, late))
    trainer.advance(pack)
    assert pack[2].slot is not None and pack[2].slot[1] == freed  # took the row the finished fit left
    while any(f.status == "running" for f in pack):
        trainer.advance(pack)
    torch.testing.assert_close(finished.adapter.prompt_embeddings(), kept, atol=0, rtol=0)
    for fit, req in zip(pack, [long, short, late]):
        alone = ulpt.train_adapters(model, [req])[req.key]
        assert fit.status == "done" and fit.step == req.config.steps
        torch.testing.assert_close(
            torch.tensor(fit.train_losses), torch.tensor(alone[1]["train_curve"]), atol=1e-5, rtol=1e-4
        )
        assert alone[0] is not None
        torch.testing.assert_close(
            fit.adapter.prompt_embeddings(), alone[0].prompt_embeddings(), atol=1e-5, rtol=1e-4
        )


def test_a_non_finite_fit_leaves_its_stack_mates_untouched(tiny_models: dict[str, ulpt.BaseModel]) -> None:
    model = tiny_models["llama"]
    requests = [request(f"fit{i}", 20 + i, **config) for i, config in enumerate(CONFIGS)]
    fits = [prepare_fit(model, r) for r in requests]
    with torch.no_grad():
        fits[1].adapter.params["ulpt_z"].fill_(float("nan"))
    run_packed(model, fits)
    assert fits[1].status == "failed" and fits[1].slot is None and "non-finite" in (fits[1].error or "")
    for i in (0, 2):
        curve, prompt = textbook(model, requests[i])
        torch.testing.assert_close(
            torch.tensor(fits[i].train_losses), torch.tensor(curve), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(fits[i].adapter.prompt_embeddings(), prompt, atol=1e-4, rtol=1e-3)


def test_a_fit_moving_to_another_trainer_keeps_its_optimizer_state(
    tiny_models: dict[str, ulpt.BaseModel],
) -> None:
    model = tiny_models["llama"]
    req = request("moving", 5, lr=0.05, steps=6, warmup_steps=2)
    fit = prepare_fit(model, req)
    first = PackedTrainer(model)
    for _ in range(3):
        first.advance([fit])
    state = fit.optimizer_state()
    assert state is not None and state["step"] == 3
    assert (
        set(state["exp_avg"]) == set(fit.adapter.params)
        and float(state["exp_avg_sq"]["ulpt_z"].abs().sum()) > 0
    )
    PackedTrainer(model).run([fit])
    curve, prompt = textbook(model, req)
    torch.testing.assert_close(torch.tensor(fit.train_losses), torch.tensor(curve), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fit.adapter.prompt_embeddings(), prompt, atol=1e-4, rtol=1e-3)


def test_bf16_stacked_fits_match_each_fit_alone(tiny_model_dirs: dict[str, object]) -> None:
    model = ulpt.load_base_model(tiny_model_dirs["llama"], dtype="bfloat16")  # type: ignore[arg-type]
    requests = [request(f"fit{i}", 30 + i, **config) for i, config in enumerate(CONFIGS)]
    fits = [prepare_fit(model, r) for r in requests]
    run_packed(model, fits)
    for fit, req in zip(fits, requests):
        adapter, metrics = ulpt.train_adapters(model, [req])[req.key]
        assert adapter is not None and all(p.dtype == torch.float32 for p in fit.adapter.parameters())
        # bf16 keeps ~3 significant digits; other rows in a forward change padding, not the result beyond that
        torch.testing.assert_close(
            torch.tensor(fit.train_losses), torch.tensor(metrics["train_curve"]), atol=0.05, rtol=0.02
        )
        torch.testing.assert_close(
            fit.adapter.prompt_embeddings(), adapter.prompt_embeddings(), atol=0.05, rtol=0.05
        )
