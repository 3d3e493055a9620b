"""Load and soak: 16 concurrent clients over 200 adapters against a replica whose adapter caches hold
fewer than that (so it keeps evicting and fetching again), for a bounded time on 127.0.0.1 only.

Asserted, with the bounds stated: no failed request below the admission limit; throughput steady (the
last window at least half the first); the replica's RSS flat (less than 20% growth after warm-up).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability_fixtures import ReliabilityRun
from tests.serve_fixtures import ServeStack, deploy_app, make_adapter, replica_process
from ulpt.registry import Registration
from ulpt.sdk import Client
from ulpt_serving.config import ServeConfig

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

APP = "soak"
BASE_MODEL = "tiny-soak"
N_ADAPTERS = 200
CLIENTS = 16
COMPACT_CACHE = 50
HOT_CACHE = 16
MAX_ONGOING = 32
"""Admission limit: requests a replica holds at once (CLIENTS stays below it, so none may fail)."""
THROUGHPUT_RATIO = 0.5
RSS_GROWTH = 0.20


@dataclass
class SoakApp:
    url: str
    key: str


@pytest.fixture(scope="module")
def soak_app(
    serve_stack: ServeStack, tiny_model_dirs: dict[str, Path], tmp_path_factory: Any
) -> Iterator[SoakApp]:
    from ray import serve

    home = tmp_path_factory.mktemp("soak-home")
    with Client(home=home, tenant="soak") as client:
        client.adapters.register_many(
            Registration(make_adapter(64, i, BASE_MODEL), name=f"soak-{i:03d}") for i in range(N_ADAPTERS)
        )
        key = client.create_api_key("soak").key
    config = ServeConfig(
        model=str(tiny_model_dirs["llama"]),
        served_model_name=BASE_MODEL,
        home=str(home),
        num_cpus=0,
        torch_threads=1,
        engine="native",  # the soak measures ulpt's engine (vLLM's CPU kernels need wider heads)
        max_batch_size=16,
        max_ongoing_requests=MAX_ONGOING,
        max_queued_requests=64,
        compact_cache_count=COMPACT_CACHE,
        hot_cache_count=HOT_CACHE,
        log_requests=False,
    )
    prefix = deploy_app(APP, config)
    try:
        yield SoakApp(f"{serve_stack.url}{prefix}", key)
    finally:
        serve.delete(APP)


@dataclass
class Results:
    done: list[tuple[float, float]] = field(default_factory=list)
    """(finished at, latency) of each successful request, seconds since the start."""
    failed: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(app: SoakApp, seed: int, start: float, stop: float, out: Results) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {app.key}"}) as http:
        while time.monotonic() < stop:
            body = {
                "model": f"soak-{rng.randrange(N_ADAPTERS):03d}",
                "prompt": f"request {rng.randrange(10**6)}: the movie was",
                "max_tokens": 8,
                "temperature": 0,
            }
            sent = time.monotonic()
            try:
                answer = http.post(f"{app.url}/v1/completions", json=body)
                ok, why = answer.status_code == 200, f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as exc:
                ok, why = False, repr(exc)
            finished = time.monotonic()
            with out.lock:
                if ok:
                    out.done.append((finished - start, finished - sent))
                    out.models.add(body["model"])
                else:
                    out.failed.append(why)


def _sample_rss(process: Any, start: float, stop: float, out: Results) -> None:
    while time.monotonic() < stop:
        out.rss.append((time.monotonic() - start, process.memory_info().rss))
        time.sleep(1.0)


def test_soak_many_adapters_small_cache_steady_throughput_flat_memory(
    soak_app: SoakApp, serve_stack: ServeStack, reliability: ReliabilityRun
) -> None:
    duration = float(reliability.size(ci=20, full=300))
    window = 30.0 if reliability.full else 5.0
    replica = replica_process(APP)
    handle = serve_stack.handle(APP)
    out = Results()
    start = time.monotonic()
    stop = start + duration
    threads = [
        threading.Thread(target=_client, args=(soak_app, seed, start, stop, out)) for seed in range(CLIENTS)
    ]
    threads.append(threading.Thread(target=_sample_rss, args=(replica, start, stop, out)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + 300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    cache = handle.stats.remote().result()["cache"]

    windows = [0] * int(duration // window)
    for finished, _ in out.done:
        if int(finished // window) < len(windows):
            windows[int(finished // window)] += 1
    per_s = [round(n / window, 2) for n in windows]
    latencies = sorted(latency for _, latency in out.done)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    warm = [rss for t, rss in out.rss if t >= window]  # after the first window: caches full, allocator warm
    rss_growth = (warm[-1] - warm[0]) / warm[0]
    reliability.record(
        "soak",
        {
            "duration_s": duration,
            "clients": CLIENTS,
            "adapters": N_ADAPTERS,
            "compact_cache_count": COMPACT_CACHE,
            "hot_cache_count": HOT_CACHE,
            "admission_limit": MAX_ONGOING,
            "requests_ok": len(out.done),
            "requests_failed": len(out.failed),
            "window_s": window,
            "throughput_per_window_rps": per_s,
            "latency_p50_s": round(p50, 4),
            "latency_p99_s": round(p99, 4),
            "rss_mb_samples": [round(rss / 2**20, 1) for _, rss in out.rss[:: max(1, len(out.rss) // 60)]],
            "rss_growth_after_warmup": round(rss_growth, 4),
            "compact_evictions": cache["compact_evictions"],
            "hot_evictions": cache["hot_evictions"],
            "fetches": cache["fetches"],
            "distinct_adapters_used": len(out.models),
            "bounds": {"last_window_vs_first": THROUGHPUT_RATIO, "rss_growth_max": RSS_GROWTH},
        },
    )
    assert not out.failed, out.failed[:5]
    assert cache["compact_evictions"] > 0 and cache["hot_evictions"] > 0  # the cache was too small
    assert cache["fetches"] > len(out.models)  # evicted adapters were fetched (and checked) again
    assert windows[-1] >= THROUGHPUT_RATIO * windows[0], per_s
    assert rss_growth < RSS_GROWTH, [rss for _, rss in out.rss]
