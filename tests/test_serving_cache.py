"""The per-replica adapter cache: LRU tiers under budgets, 10,000 adapters over time, single flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
import torch

import ulpt
from ulpt.errors import BlobIntegrityError
from ulpt_serving import AdapterCache, CompactAdapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HIDDEN = 64


def _adapter(seed: int, n_tokens: int = 4) -> ulpt.Adapter:
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=n_tokens, rank=2, seed=seed), HIDDEN)
    with torch.no_grad():
        adapter.params["ulpt_shift"].add_(float(seed))  # make every prompt distinguishable
    return adapter


def _materialize(adapters: Sequence[CompactAdapter]) -> list[torch.Tensor | ulpt.models.prefix.CachedPrompt]:
    return [a.materialize() for a in adapters]


class CountingFetch:
    """A store stand-in that counts fetches per key (optionally slow, optionally failing)."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: dict[str, int] = {}
        self.delay_s = delay_s
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, key: str) -> ulpt.Adapter:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
        time.sleep(self.delay_s)
        if self.fail:
            raise BlobIntegrityError(f"blob of {key} does not hash to its SHA-256")
        return _adapter(int(key.removeprefix("k")))

    def total(self) -> int:
        return sum(self.calls.values())


def _load(cache: AdapterCache, fetch: CountingFetch, key: str) -> CompactAdapter:
    return cache.get_sync(key, lambda: fetch(key))


def test_compact_tier_evicts_least_recently_used_by_count_and_bytes() -> None:
    fetch = CountingFetch()
    cache = AdapterCache(_materialize, compact_count=3, hot_count=1)
    for key in ("k1", "k2", "k3"):
        _load(cache, fetch, key)
    _load(cache, fetch, "k1")  # touch k1: k2 is now the least recently used
    _load(cache, fetch, "k4")
    compact, _ = cache.cached_keys()
    assert compact == ["k3", "k1", "k4"]
    assert fetch.calls == {"k1": 1, "k2": 1, "k3": 1, "k4": 1}
    _load(cache, fetch, "k2")
    assert fetch.calls["k2"] == 2  # evicted, so fetched (and checked) again

    one = CompactAdapter.from_adapter(_adapter(1)).nbytes
    by_bytes = AdapterCache(_materialize, compact_bytes=int(2.5 * one))
    for key in ("k1", "k2", "k3"):
        _load(by_bytes, fetch, key)
    stats = by_bytes.stats()
    assert stats.compact_count == 2 and stats.compact_bytes <= 2.5 * one and stats.compact_evictions == 1


def test_ten_thousand_distinct_adapters_pass_through_a_small_cache() -> None:
    fetch = CountingFetch()
    cache = AdapterCache(_materialize, compact_count=500, hot_count=64)
    started = time.perf_counter()
    for batch_start in range(0, 10_000, 64):
        keys = [f"k{i}" for i in range(batch_start, min(batch_start + 64, 10_000))]
        rows = [(key, _load(cache, fetch, key)) for key in keys]
        prompts = cache.prompts(rows)
        assert len(prompts) == len(keys)
    stats = cache.stats()
    assert stats.fetches == 10_000 and stats.failed_fetches == 0
    assert stats.compact_count == 500 and stats.hot_count == 64
    assert stats.compact_evictions == 9_500 and stats.hot_evictions == 10_000 - 64
    assert stats.compact_bytes == 500 * CompactAdapter.from_adapter(_adapter(0)).nbytes
    assert time.perf_counter() - started < 60
    # An early adapter was evicted long ago: it comes back (fetched again) with the right prompt.
    again = _load(cache, fetch, "k7")
    (prompt,) = cache.prompts([("k7", again)])
    torch.testing.assert_close(prompt, _adapter(7).prompt_embeddings().detach())
    assert fetch.calls["k7"] == 2


def test_hot_tier_keeps_recent_prompts_and_falls_back_to_compact() -> None:
    fetch = CountingFetch()
    made: list[int] = []

    def prepare(adapters: Sequence[CompactAdapter]) -> list[torch.Tensor | ulpt.models.prefix.CachedPrompt]:
        made.append(len(adapters))
        return _materialize(adapters)

    cache = AdapterCache(prepare, compact_count=2, hot_count=2)
    rows = [(k, _load(cache, fetch, k)) for k in ("k1", "k2")]
    cache.prompts(rows + rows)  # duplicates in a batch are prepared once
    assert made == [2]
    cache.prompts(rows)
    assert made == [2]  # both hot
    _load(cache, fetch, "k3")  # evicts k1 from the compact tier only
    assert _load(cache, fetch, "k1") is rows[0][1]  # still hot, so no fetch
    assert fetch.calls["k1"] == 1
    huge = AdapterCache(_materialize, hot_bytes=10)  # an entry over the whole budget is used, not kept
    (prompt,) = huge.prompts([("k1", rows[0][1])])
    assert prompt.shape == (4, HIDDEN) and huge.stats().hot_count == 0


def test_concurrent_requests_for_one_cold_adapter_fetch_it_once() -> None:
    fetch = CountingFetch(delay_s=0.3)
    cache = AdapterCache(_materialize)

    async def many() -> list[CompactAdapter]:
        cold = [cache.get("k5", lambda: fetch("k5")) for _ in range(50)]
        other = cache.get("k6", lambda: fetch("k6"))  # another cold adapter is not held up behind k5
        return await asyncio.gather(*cold, other)

    started = time.perf_counter()
    results = asyncio.run(many())
    assert time.perf_counter() - started < 2.0
    assert fetch.calls == {"k5": 1, "k6": 1}
    assert all(r is results[0] for r in results[:50])
    threads = [threading.Thread(target=_load, args=(cache, fetch, "k5")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fetch.calls["k5"] == 1 and cache.stats().hits >= 8


def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    fetch = CountingFetch(delay_s=0.2, fail=True)
    cache = AdapterCache(_materialize)
    futures = [cache.load("k1", lambda: fetch("k1")) for _ in range(10)]
    for future in futures:
        with pytest.raises(BlobIntegrityError):
            future.result()
    assert fetch.calls == {"k1": 1}
    fetch.fail = False
    assert _load(cache, fetch, "k1").spec.seed == 1
    assert fetch.calls == {"k1": 2} and cache.stats().failed_fetches == 1
