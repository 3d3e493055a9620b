"""The per-replica adapter cache: many compact adapters, few materialized ones, nothing fixed in size.

Like vLLM's LoRA worker manager, it is separate from the model runner and has explicit capacities,
but it has two tiers because a ULPT adapter is tiny until materialized:

- compact: the verified learned tensors (Z [n, r], scale [d], shift [d]: ~4.7 KB at d=576) and the
  projection P [r, d] the loader generated to check its fingerprint (kept, so P is generated once per
  load), loaded from catalog + store on first use (SHA-256 and projection fingerprint checked),
  LRU under a byte (and optional count) budget. Tens of thousands fit; an evicted one is fetched again.
- hot: the materialized [n, d] prompt, plus its per-layer key/value prefix on decoder-only models
  (~460 KB for n=10 on SmolLM2), LRU under its own budget. Built in batches by the decode thread.

Concurrent requests for one cold adapter share a single fetch (single flight); a failed fetch is
reported to every waiter and not cached, so the next request tries again.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import torch

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.models.prefix import CachedPrompt

ENTRY_OVERHEAD = 512
"""Bytes charged per entry for the Python objects around the tensors (measured order of magnitude)."""

HotPrompt: TypeAlias = torch.Tensor | CachedPrompt
V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class CompactAdapter:
    """An adapter's learned tensors and its frozen ones: what the cache keeps for every adapter it has seen.

    The frozen tensors (ULPT's projection P [r, d], LoPT-2's X0) are the ones the loader generated from
    the seed to check the adapter's fingerprint; keeping them (r * d floats, the size of the learned
    tensors) means a seed is expanded once per load, not again each time the prompt is materialized.
    """

    spec: AdapterSpec
    hidden_size: int
    tensors: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]

    @classmethod
    def from_adapter(cls, adapter: Adapter) -> CompactAdapter:
        frozen = {name: t.detach().to("cpu") for name, t in adapter.frozen.items()}
        return cls(adapter.spec, adapter.hidden_size, adapter.tensors(), frozen)

    @property
    def nbytes(self) -> int:
        tensors = (*self.tensors.values(), *self.frozen.values())
        return ENTRY_OVERHEAD + sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def materialize(self) -> torch.Tensor:
        """The [n, d] prompt, from the learned tensors and the frozen ones checked at load."""
        return self.spec.adapter_method.materialize(self.tensors, self.frozen).contiguous()


def hot_nbytes(prompt: HotPrompt) -> int:
    if isinstance(prompt, CachedPrompt):
        return ENTRY_OVERHEAD + prompt.nbytes
    return ENTRY_OVERHEAD + prompt.numel() * prompt.element_size()


class Lru(Generic[V]):
    """An LRU map under a byte budget and an optional count cap (not thread-safe: the cache locks)."""

    def __init__(self, max_bytes: int, max_count: int | None, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._size_of = size_of
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: V) -> None:
        """Insert as most recent and evict the least recent until within budget.

        An entry larger than the whole budget is not kept (the caller still has it for this request).
        """
        size = self._size_of(value)
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        if size > self.max_bytes or self.max_count == 0:
            return
        self._items[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes or (
            self.max_count is not None and len(self._items) > self.max_count
        ):
            _, (_, evicted) = self._items.popitem(last=False)
            self.nbytes -= evicted
            self.evictions += 1

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._items)


@dataclass(frozen=True)
class CacheStats:
    compact_count: int
    compact_bytes: int
    hot_count: int
    hot_bytes: int
    hits: int
    """Requests whose compact adapter was in memory."""
    fetches: int
    """Fetches from catalog + store actually run (one per cold adapter, however many requests wait)."""
    failed_fetches: int
    compact_evictions: int
    hot_evictions: int
    materialized: int
    """Hot entries built (prompt + prefix), counted per adapter."""


class AdapterCache:
    """Compact + hot adapter tiers with single-flight loading; safe to use from threads and asyncio."""

    def __init__(
        self,
        prepare: Callable[[Sequence[CompactAdapter]], list[HotPrompt]],
        *,
        compact_bytes: int = 256 << 20,
        compact_count: int | None = None,
        hot_bytes: int = 512 << 20,
        hot_count: int | None = None,
        loader_threads: int = 8,
    ) -> None:
        """`prepare` turns compact adapters into what a batch row needs (a prompt, or a prompt + prefix)."""
        self._prepare = prepare
        self._compact: Lru[CompactAdapter] = Lru(compact_bytes, compact_count, lambda c: c.nbytes)
        self._hot: Lru[tuple[HotPrompt, CompactAdapter]] = Lru(
            hot_bytes, hot_count, lambda e: hot_nbytes(e[0])
        )
        self._loading: dict[str, Future[CompactAdapter]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(loader_threads, thread_name_prefix="ulpt-adapter-load")
        self._hits = self._fetches = self._failed = self._materialized = 0

    @classmethod
    def sized_by(
        cls, config: Any, prepare: Callable[[Sequence[CompactAdapter]], list[HotPrompt]]
    ) -> AdapterCache:
        """A cache with the tier sizes and loader threads of a `ServeConfig`, whichever engine prepares."""
        return cls(
            prepare,
            compact_bytes=config.compact_cache_bytes,
            compact_count=config.compact_cache_count,
            hot_bytes=config.hot_cache_bytes,
            hot_count=config.hot_cache_count,
            loader_threads=config.loader_threads,
        )

    # ---- compact tier ------------------------------------------------------------------------

    def load(self, key: str, fetch: Callable[[], Adapter]) -> Future[CompactAdapter]:
        """The compact adapter for `key`, fetching it with `fetch` (in a loader thread) only if no one is."""
        with self._lock:
            cached = self._compact.get(key)
            if cached is None:
                hot = self._hot.get(key)
                if hot is not None:  # still materialized: its compact form comes back for free
                    cached = hot[1]
                    self._compact.put(key, cached)
            if cached is not None:
                self._hits += 1
                done: Future[CompactAdapter] = Future()
                done.set_result(cached)
                return done
            pending = self._loading.get(key)
            if pending is not None:
                return pending
            future: Future[CompactAdapter] = Future()
            self._loading[key] = future
            self._fetches += 1
        self._pool.submit(self._fetch, key, fetch, future)
        return future

    def _fetch(self, key: str, fetch: Callable[[], Adapter], future: Future[CompactAdapter]) -> None:
        try:
            compact = CompactAdapter.from_adapter(fetch())
        except BaseException as exc:
            with self._lock:
                self._failed += 1
                self._loading.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._compact.put(key, compact)
            self._loading.pop(key, None)
        future.set_result(compact)

    async def get(self, key: str, fetch: Callable[[], Adapter]) -> CompactAdapter:
        """`load` for asyncio callers (a replica's request handlers)."""
        return await asyncio.wrap_future(self.load(key, fetch))

    def get_sync(self, key: str, fetch: Callable[[], Adapter]) -> CompactAdapter:
        return self.load(key, fetch).result()

    # ---- hot tier ----------------------------------------------------------------------------

    def prompts(self, rows: Sequence[tuple[str, CompactAdapter] | None]) -> list[HotPrompt | None]:
        """What each batch row needs; misses are prepared together (one pass per prompt length).

        Rows carry their compact adapter, so a batch never waits on the store even if the compact
        entry was evicted since the request loaded it.
        """
        out: list[HotPrompt | None] = [None] * len(rows)
        missing: dict[str, CompactAdapter] = {}
        with self._lock:
            for i, row in enumerate(rows):
                if row is None:
                    continue
                hot = self._hot.get(row[0])
                if hot is not None:
                    out[i] = hot[0]
                else:
                    missing[row[0]] = row[1]
        if missing:
            prepared = dict(zip(missing, self._prepare(list(missing.values())), strict=True))
            with self._lock:
                for key, prompt in prepared.items():
                    self._hot.put(key, (prompt, missing[key]))
                self._materialized += len(prepared)
            for i, row in enumerate(rows):
                if row is not None and out[i] is None:
                    out[i] = prepared[row[0]]
        return out

    # ---- introspection -----------------------------------------------------------------------

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                compact_count=len(self._compact),
                compact_bytes=self._compact.nbytes,
                hot_count=len(self._hot),
                hot_bytes=self._hot.nbytes,
                hits=self._hits,
                fetches=self._fetches,
                failed_fetches=self._failed,
                compact_evictions=self._compact.evictions,
                hot_evictions=self._hot.evictions,
                materialized=self._materialized,
            )

    def cached_keys(self) -> tuple[list[str], list[str]]:
        """(compact keys, hot keys), least recently used first."""
        with self._lock:
            return self._compact.keys(), self._hot.keys()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
