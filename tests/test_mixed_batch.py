"""Rows of different adapters and prompt lengths in ONE batch give what each row gives alone."""

from __future__ import annotations

import pytest
import torch

import ulpt

TEXTS = [
    "the movie was good. A:",
    "one plus two equals",
    "i hate this food so very much",
    "yes",
    "the staff was",
    "review: clean room, fast service",
    "two times three is",
    "the weather today",
]


def _adapters(hidden: int) -> list[ulpt.Adapter | None]:
    """All five methods, several prompt lengths, and a row without adapter."""
    specs = [("ulpt", 3), ("pt", 5), ("dpt", 7), ("lopt1", 4), ("lopt2", 6), ("ulpt", 10), ("pt", 1)]
    adapters: list[ulpt.Adapter | None] = []
    for seed, (method, n) in enumerate(specs):
        adapter = ulpt.Adapter.create(ulpt.AdapterSpec(method=method, n_tokens=n, rank=4, seed=seed), hidden)
        with torch.no_grad():  # move away from the init so that rows really differ
            for p in adapter.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
        adapters.append(adapter)
    return [*adapters, None]


def _rows(model: ulpt.BaseModel) -> list[tuple[ulpt.Adapter | None, str]]:
    return list(zip(_adapters(model.hidden_size), TEXTS))


def test_generation_in_a_mixed_batch_equals_each_row_alone(tiny_model: ulpt.BaseModel) -> None:
    rows = _rows(tiny_model)
    mixed = tiny_model.generate(rows, max_new_tokens=12)
    alone = [tiny_model.generate([row], max_new_tokens=12)[0] for row in rows]
    assert mixed == alone
    assert len(set(mixed)) > 1, "different adapters should steer the model differently"


def test_scores_in_a_mixed_batch_equal_each_row_alone(tiny_model: ulpt.BaseModel) -> None:
    rows = _rows(tiny_model)
    mixed = tiny_model.score(rows)
    alone = torch.cat([tiny_model.score([row]) for row in rows])
    assert mixed.shape == (len(rows), len(tiny_model.tokenizer))
    torch.testing.assert_close(mixed, alone, atol=1e-4, rtol=1e-4)


def test_target_logprobs_in_a_mixed_batch_equal_each_row_alone(tiny_model: ulpt.BaseModel) -> None:
    rows = _rows(tiny_model)
    targets = ["positive", "three", "negative", "no", "great", "yes", "six", "sunny"]
    inputs = [tiny_model.encode(t) for _, t in rows]
    target_ids = [tiny_model.encode_target(t, y) for (_, t), y in zip(rows, targets)]
    logp, mask = tiny_model.target_logprobs([a for a, _ in rows], inputs, target_ids)
    assert mask.sum(1).tolist() == [len(t) for t in target_ids]
    for i, (adapter, _) in enumerate(rows):
        alone, _ = tiny_model.target_logprobs([adapter], [inputs[i]], [target_ids[i]])
        torch.testing.assert_close(logp[i].sum(), alone.sum(), atol=1e-4, rtol=1e-5)


def test_seeded_sampling_per_row_does_not_depend_on_the_batch(tiny_model: ulpt.BaseModel) -> None:
    rows = _rows(tiny_model)
    mixed = tiny_model.generate(rows, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=42)
    alone = [
        tiny_model.generate([row], max_new_tokens=8, temperature=1.0, top_p=0.9, seed=42)[0] for row in rows
    ]
    assert mixed == alone
    other_seed = tiny_model.generate(rows, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=43)
    assert other_seed != mixed


def test_each_row_stops_on_its_own(tiny_model: ulpt.BaseModel) -> None:
    rows = _rows(tiny_model)[:3]
    params = [ulpt.SamplingParams(max_new_tokens=k) for k in (1, 4, 9)]
    generations = tiny_model.generate_batch(rows, params)
    assert [len(g.token_ids) for g in generations] == [1, 4, 9]
    assert all(g.finish_reason == "length" for g in generations)
    full = tiny_model.generate_batch(rows[:1], [ulpt.SamplingParams(max_new_tokens=12)])[0]
    if len(full.text.strip()) > 2:
        stop = full.text.strip()[1:3]
        cut = tiny_model.generate(rows[:1], max_new_tokens=12, stop=[stop])[0]
        assert stop not in cut and full.text.startswith(cut)


def test_rows_with_a_prompt_of_the_wrong_width_are_refused(tiny_model: ulpt.BaseModel) -> None:
    wrong = ulpt.Adapter.create(ulpt.AdapterSpec(), tiny_model.hidden_size * 2)
    with pytest.raises(ValueError, match="hidden size"):
        tiny_model.generate([(wrong, "hello")])


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-40, 1.0), (5e-324, 0.9), (1.0, 1e-46)])
def test_temperature_or_top_p_next_to_zero_decode_greedily(
    tiny_model: ulpt.BaseModel, temperature: float, top_p: float
) -> None:
    """Dividing float32 logits by 1e-40 would give inf/NaN; the limit, greedy decoding, is used."""
    rows = _rows(tiny_model)[:3]
    greedy = tiny_model.generate(rows, max_new_tokens=6)
    near_zero = tiny_model.generate(rows, max_new_tokens=6, temperature=temperature, top_p=top_p, seed=1)
    assert near_zero == greedy


def test_invalid_sampling_parameters_are_refused() -> None:
    with pytest.raises(ulpt.UlptError, match="top_p"):
        ulpt.SamplingParams(top_p=0)
    with pytest.raises(ulpt.UlptError, match="max_new_tokens"):
        ulpt.SamplingParams(max_new_tokens=-1)


def test_continuations_sharing_a_prefix_equal_full_target_scoring(tiny_model: ulpt.BaseModel) -> None:
    rows = _rows(tiny_model)
    labels = ["positive", "negative", "one two three", "yes"]
    inputs = [tiny_model.encode(t) for _, t in rows]
    continuations = [
        [tiny_model.encode_target(t, y, eos=eos) for y in labels for eos in (True, False)] for _, t in rows
    ]
    shared = tiny_model.continuation_logprobs([a for a, _ in rows], inputs, continuations)
    for i, (adapter, _) in enumerate(rows):
        for j, seq in enumerate(continuations[i]):
            full, _ = tiny_model.target_logprobs([adapter], [inputs[i]], [seq])
            torch.testing.assert_close(shared[i][j], full[0], atol=1e-4, rtol=1e-4)


def test_continuations_after_cached_prefixes_equal_inline_prompts(tiny_models) -> None:
    """Evaluation reuses each adapter's prompt keys/values across its rows; scores must not change."""
    model = tiny_models["llama"]
    assert model.supports_prefix_cache
    rows = _rows(model)
    adapters = [a for a, _ in rows]
    cached = {id(a): c for a, c in zip(adapters, model.cache_prompts([a for a in adapters if a]))}
    sources = [cached[id(a)] if a is not None else None for a in adapters]
    inputs = [model.encode(t) for _, t in rows]
    continuations = [[model.encode_target(t, y) for y in ("yes", "no way")] for _, t in rows]
    inline = model.continuation_logprobs(adapters, inputs, continuations)
    reused = model.continuation_logprobs(sources, inputs, continuations)
    for a, b in zip(inline, reused):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_chunk_plan_groups_similar_lengths_within_budgets() -> None:
    from ulpt.models.batch import plan_chunks

    lengths = [5, 100, 6, 98, 7, 3, 50]
    chunks = plan_chunks(lengths, max_rows=3, max_tokens=200)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    assert all(len(c) <= 3 and len(c) * max(lengths[i] for i in c) <= 200 for c in chunks)
    assert chunks[0] == [5, 0, 2]  # the three shortest rows share a pass
    assert plan_chunks([500], max_rows=4, max_tokens=10) == [[0]]  # an oversized row still runs, alone
