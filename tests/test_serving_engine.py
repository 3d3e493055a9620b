"""The serving engine: mixed-adapter batches equal each row alone, prefix caches equal inline prompts,
and streamed text equals the whole generation."""

from __future__ import annotations

import pytest
import torch

import ulpt
from tests.serve_fixtures import make_adapter
from ulpt.models.prefix import CachedPrompt
from ulpt_serving import BatchItem, Engine, ServeConfig, TextStream

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [
    "the movie was good. A:",
    "one plus two equals",
    "i hate this food so very much",
    "yes",
    "the staff was",
    "review: clean room, fast service",
]


def _items(model: ulpt.BaseModel, engine: Engine, count: int, max_new_tokens: int = 10) -> list[BatchItem]:
    """`count` rows of distinct adapters (all methods, prompt lengths 1-10) plus one bare base-model row."""
    params = ulpt.SamplingParams(max_new_tokens=max_new_tokens)
    items = []
    for i in range(count):
        adapter = make_adapter(model.hidden_size, i, "tiny")
        compact = engine.cache.get_sync(f"a{i}", lambda a=adapter: a)
        items.append(BatchItem(TEXTS[i % len(TEXTS)], params, f"a{i}", compact))
    items.append(BatchItem("no adapter here", params))
    return items


def test_a_batch_of_18_adapters_equals_each_row_alone(tiny_model: ulpt.BaseModel) -> None:
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    items = _items(tiny_model, engine, 18)
    mixed = engine.generate(items)
    # Each row alone, through the core model with its adapter inline (no serving cache, no prefix).
    reference = []
    for i, item in enumerate(items):
        source = make_adapter(tiny_model.hidden_size, i, "tiny") if item.adapter_key else None
        reference.append(tiny_model.generate_batch([(source, item.text)], [item.params])[0])
    assert [g.token_ids for g in mixed] == [g.token_ids for g in reference]
    assert [g.text for g in mixed] == [g.text for g in reference]
    assert len({tuple(g.token_ids) for g in mixed}) > 5, "adapters should steer the model differently"
    hot = engine.cache.prompts([(items[0].adapter_key, items[0].adapter)])[0]  # type: ignore[list-item]
    assert isinstance(hot, CachedPrompt) == (tiny_model.family == "causal")


def test_prefix_cached_rows_equal_inline_rows(tiny_models: dict[str, ulpt.BaseModel]) -> None:
    model = tiny_models["llama"]
    adapters = [make_adapter(model.hidden_size, i, "tiny") for i in range(8)]
    cached = model.cache_prompts(adapters)
    texts = [TEXTS[i % len(TEXTS)] for i in range(8)]
    texts[2] = ""  # no text after the prompt: this row must fall back to its inline prompt
    # Mix every kind of row in one batch: cached prefix, inline adapter, materialized tensor, none.
    sources: list[ulpt.models.base.RowSource] = [
        cached[0],
        adapters[1],
        cached[2],
        cached[3].prompt,
        None,
        cached[5],
        adapters[6],
        cached[7],
    ]
    for params in (
        ulpt.SamplingParams(max_new_tokens=12),
        ulpt.SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7),
    ):
        with_prefix = model.generate_batch(list(zip(sources, texts)), [params] * 8)
        inline = model.generate_batch(
            [(a if s is not None else None, t) for a, s, t in zip(adapters, sources, texts)], [params] * 8
        )
        assert [g.token_ids for g in with_prefix] == [g.token_ids for g in inline]


def test_prefix_keys_and_values_match_the_full_forward(tiny_models: dict[str, ulpt.BaseModel]) -> None:
    model = tiny_models["llama"]
    adapter = make_adapter(model.hidden_size, 3, "tiny")
    (prefix,) = model.cache_prompts([adapter])
    prompt = adapter.prompt_embeddings().detach()
    assert prefix.n_tokens == prompt.shape[0] and len(prefix.kv) == model.config.num_hidden_layers
    out = model.hf(inputs_embeds=prompt[None], use_cache=True)
    for layer, (keys, values) in enumerate(prefix.kv):  # [layers, 2, kv_heads, n, head_dim]
        torch.testing.assert_close(keys, out.past_key_values.layers[layer].keys[0])
        torch.testing.assert_close(values, out.past_key_values.layers[layer].values[0])
    assert not tiny_models["t5"].supports_prefix_cache
    with pytest.raises(ValueError, match="decoder-only"):
        tiny_models["t5"].cache_prompts([adapter])


def test_streamed_text_equals_the_whole_generation_and_never_shows_a_stop_string(
    tiny_model: ulpt.BaseModel,
) -> None:
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    item = _items(tiny_model, engine, 3, max_new_tokens=16)[1]
    full = engine.generate([item])[0]
    stops = [full.text[3:5]] if len(full.text) > 6 else []
    for stop in ([], stops):
        params = ulpt.SamplingParams(max_new_tokens=16, stop=tuple(stop))
        row = BatchItem(item.text, params, item.adapter_key, item.adapter)
        stream = TextStream(tiny_model, params)
        deltas = []
        for step in engine.steps([row]):
            deltas.append(stream.push(step[0]))
            assert not any(s in "".join(deltas) for s in stop)
            if stream.done:
                break
        deltas.append(stream.finish())
        expected = tiny_model.generate_batch(
            [(make_adapter(tiny_model.hidden_size, 1, "t"), item.text)], [params]
        )
        assert "".join(deltas) == expected[0].text
        assert stream.finish_reason == expected[0].finish_reason


def test_token_ids_are_exact_within_the_limit_and_a_huge_text_stops_early(
    tiny_model: ulpt.BaseModel,
) -> None:
    """Long texts are counted in chunks first, so one far over the limit is never tokenized whole (a
    3 MiB prompt held ~1 GB in the tokenizer), while one within the limit still gets its exact count."""
    engine = Engine.create(tiny_model, ServeConfig(model="tiny"))
    long_text = "the movie was good " * 2000  # ~38k characters: three chunks
    exact = len(tiny_model.encode(long_text))
    assert engine.tokenize(long_text, exact) == tiny_model.encode(long_text)
    assert engine.tokenize("one plus two", 1) == tiny_model.encode("one plus two")  # short: exact
    assert engine.tokenize(long_text, exact // 10) is None
    seen: list[int] = []
    encode = tiny_model.encode

    def counting(text: str) -> list[int]:
        seen.append(len(text))
        return encode(text)

    tiny_model.encode = counting  # type: ignore[method-assign]
    try:
        assert engine.tokenize("hello world " * (1 << 18), 4096) is None  # 3 MiB, ~6M tokens
    finally:
        del tiny_model.encode
    assert max(seen) <= 16_384 and sum(seen) < 1 << 20  # a few chunks, never the whole text
