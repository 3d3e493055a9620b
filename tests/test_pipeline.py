"""The model pipeline: one class per family over `prefill` / `step`, token ids that travel with a
request (tokenized once), and a projection P generated once per adapter load."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ulpt
from tests.serve_fixtures import make_adapter
from ulpt.adapters import projection
from ulpt.models import CausalModel, Seq2SeqModel
from ulpt.models.shared import load_shared_base_model, pack_base_model
from ulpt_serving import AdapterCache, BatchItem, CompactAdapter, Engine, ServeConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_family_loads_as_its_own_class(
    tiny_models: dict[str, ulpt.BaseModel], tiny_model_dirs: Any
) -> None:
    assert isinstance(tiny_models["llama"], CausalModel) and tiny_models["llama"].family == "causal"
    assert isinstance(tiny_models["t5"], Seq2SeqModel) and tiny_models["t5"].family == "seq2seq"
    shared = load_shared_base_model(pack_base_model(tiny_model_dirs["t5"]))
    assert isinstance(shared, Seq2SeqModel)


def test_a_greedy_loop_over_prefill_and_step_is_generate(tiny_model: ulpt.BaseModel) -> None:
    """What a continuous-batching loop will do by hand: prefill, then one step per token, rows leaving."""
    adapters = [make_adapter(tiny_model.hidden_size, i, "t") for i in range(3)]
    texts = ["the movie was", "one plus two", "yes"]
    ids = [tiny_model.encode(t) for t in texts]
    state = tiny_model.prefill(adapters, ids)
    torch.testing.assert_close(
        state.logits[:, -1].float(), tiny_model.score(list(zip(adapters, texts))), rtol=0, atol=0
    )
    tokens = state.logits[:, -1].argmax(-1)
    by_hand = [[t] for t in tokens.tolist()]
    for _ in range(7):
        tokens = tiny_model.step(state, tokens[:, None])[:, -1].argmax(-1)
        for row, t in zip(by_hand, tokens.tolist()):
            row.append(t)
    params = ulpt.SamplingParams(max_new_tokens=8, ignore_eos=True)
    generated = tiny_model.generate_batch(list(zip(adapters, ids)), [params] * 3)
    assert [g.token_ids for g in generated] == by_hand
    state = tiny_model.prefill(adapters, ids)
    state.select(torch.tensor([2, 0], device=tiny_model.device))  # rows leave and reorder
    first = tiny_model.step(state, torch.tensor([[by_hand[2][0]], [by_hand[0][0]]]))[:, -1].argmax(-1)
    assert first.tolist() == [by_hand[2][1], by_hand[0][1]]


def test_a_served_text_is_tokenized_once(tiny_model: ulpt.BaseModel, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    params = ulpt.SamplingParams(max_new_tokens=6)
    text = "the staff was"
    ids = engine.tokenize(text, 100)
    assert ids is not None
    reference = engine.generate([BatchItem(text, params)])
    calls: list[str] = []
    encode = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode", lambda t: calls.append(t) or encode(t))
    carried = engine.generate([BatchItem(text, params, token_ids=tuple(ids))])
    assert carried == reference and calls == []


def test_the_projection_is_generated_once_per_adapter_load(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=4, rank=2, seed=5), 64)
    blob = adapter.to_bytes()
    expected = adapter.prompt_embeddings().detach()
    calls: list[int] = []
    make = projection.make_projection
    monkeypatch.setattr(projection, "make_projection", lambda *a, **k: calls.append(1) or make(*a, **k))
    cache = AdapterCache(lambda compact: [c.materialize() for c in compact], hot_count=1)
    compact = cache.get_sync("a", lambda: ulpt.Adapter.from_bytes(blob))  # checks P's fingerprint
    assert len(calls) == 1
    for key in ("a", "b", "a"):  # hot_count=1: "a" is evicted by "b" and materialized again
        (prompt,) = cache.prompts([(key, compact)])
        assert torch.equal(prompt, expected)
    assert cache.stats().materialized == 3 and len(calls) == 1
    assert isinstance(compact, CompactAdapter) and set(compact.frozen) == {"proj"}
