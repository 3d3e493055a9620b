"""The core on the real model and real data (slow tier: SmolLM2-135M and the tasks ulpt generates)."""

from __future__ import annotations

import pytest
import torch

import ulpt
from ulpt.data.generated import generate_rows, split_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> ulpt.BaseModel:
    return ulpt.load_base_model("smollm2-135m")


def test_fresh_ulpt_prompt_rows_match_smollm2_embedding_scale(smollm2: ulpt.BaseModel) -> None:
    embed_norm = smollm2.token_embeddings.norm(dim=-1).mean().item()
    xavier = ulpt.Adapter.create(ulpt.AdapterSpec(rank=2, n_tokens=100, seed=0), smollm2.hidden_size)
    paper = ulpt.Adapter.create(
        ulpt.AdapterSpec(rank=2, n_tokens=100, seed=0, projection="normal"), smollm2.hidden_size
    )
    xavier_norm = xavier.prompt_embeddings().norm(dim=-1).mean().item()
    paper_norm = paper.prompt_embeddings().norm(dim=-1).mean().item()
    assert 2.5 < embed_norm < 4.0, embed_norm  # measured ~3.2
    assert embed_norm / 4 < xavier_norm < embed_norm * 2, (xavier_norm, embed_norm)
    assert paper_norm > 8 * embed_norm, (paper_norm, embed_norm)  # ~sqrt(r*d) ~ 34


def test_mixed_batch_equals_solo_on_smollm2(smollm2: ulpt.BaseModel) -> None:
    rows = generate_rows("category-code", 6, seed=0)
    adapters = [
        ulpt.Adapter.create(ulpt.AdapterSpec(method=m, n_tokens=n, rank=2, seed=i), smollm2.hidden_size)
        for i, (m, n) in enumerate([("ulpt", 10), ("pt", 4), ("dpt", 7), ("ulpt", 1), ("pt", 12)])
    ]
    batch = [(a, r["input"]) for a, r in zip([*adapters, None], rows)]
    mixed = smollm2.generate(batch, max_new_tokens=6)
    alone = [smollm2.generate([row], max_new_tokens=6)[0] for row in batch]
    assert mixed == alone
    torch.testing.assert_close(
        smollm2.score(batch), torch.cat([smollm2.score([r]) for r in batch]), atol=1e-4, rtol=1e-4
    )


def test_training_on_a_generated_task_lowers_the_held_out_loss(smollm2: ulpt.BaseModel) -> None:
    from ulpt.training.evaluate import EvalItem, evaluate
    from ulpt.training.examples import tokenize

    train, evals, _ = split_task("sum-of-pair", train=200, validation=40, test=0, seed=0)
    spec = ulpt.AdapterSpec(rank=2, n_tokens=10, seed=0)
    fresh = ulpt.Adapter.create(spec, smollm2.hidden_size)  # what training starts from
    before = evaluate(smollm2, [EvalItem("fresh", fresh, tokenize(smollm2, evals, 10))])["fresh"]
    adapter, metrics = ulpt.train_adapter(
        smollm2, spec, train, evals, steps=16, lr=3e-2, batch_size=4, eval_every=16
    )
    assert metrics["eval_loss"] < 0.8 * before["eval_loss"], (metrics["eval_loss"], before)
    assert metrics["eval_accuracy"] >= before["eval_accuracy"]
    assert adapter.num_trainable_params == 10 * 2 + 2 * 576
