"""Serving benchmark: mixed-adapter batches vs the base model alone, per-adapter batches and one at a time.

The same request set (prompt lengths, max_tokens, adapter of each request, arrival order) runs in four modes:

  (1) base      the base model alone, batched, no adapter (the upper bound)
  (2) mixed     batches that mix adapters (64 distinct by default), as ulpt serves them
  (3) grouped   each batch split per adapter, as `serve.multiplexed` gives (`_split_batch_by_model_id`)
  (4) solo      one request at a time

first through the engine (the replica's decode loop, no HTTP), then end to end over HTTP against a real
local Ray Serve on 127.0.0.1 with bounded concurrent clients. EOS is disabled so that every request
generates exactly max_tokens in every mode (equal work); outputs are greedy.

    python benchmarks/serving.py                           # SmolLM2-135M engine, tiny model over HTTP
    python benchmarks/serving.py --http-model smollm2-135m --requests 64
    python benchmarks/serving.py --model tiny --quick      # seconds, for a smoke run
    python benchmarks/serving.py --load [--quick]          # Poisson load: ulpt's engine vs vLLM
                                                           # (benchmarks/serving_load.py)

Writes benchmarks/results/serving.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import ulpt
from ulpt.models.tiny import build_tiny_model
from ulpt_serving import BatchItem, Engine, ServeConfig

WORDS = (
    "the movie was good and the staff friendly but the room felt small while the food came late "
    "one two three plus four equals review of a quiet hotel near the station with clean sheets "
    "fast service cold coffee great view loud street helpful desk slow lift fair price"
).split()
MODES = ("base", "mixed", "grouped", "solo")


@dataclass(frozen=True)
class Request:
    index: int
    adapter: int
    text: str
    max_tokens: int


@dataclass
class ModeResult:
    mode: str
    requests: int
    generated_tokens: int
    wall_s: float
    tokens_per_s: float
    p50_latency_s: float
    p99_latency_s: float
    batches: int
    mean_rows_per_batch: float
    prefill_s: float = 0.0
    """Engine only: time to the first token of each batch (prompt prefill, incl. building cold prefixes)."""
    decode_s: float = 0.0
    """Engine only: the remaining decoding steps."""


def make_requests(
    count: int, adapters: int, min_words: int, max_words: int, max_tokens: int
) -> list[Request]:
    """A fixed request set: every adapter gets count/adapters requests, arriving in shuffled order."""
    rng = random.Random(0)
    owners = [i % adapters for i in range(count)]
    rng.shuffle(owners)
    out = []
    for i, owner in enumerate(owners):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        out.append(Request(i, owner, " ".join(words), max_tokens))
    return out


def make_adapters(count: int, hidden: int, n_tokens: int, rank: int) -> list[ulpt.Adapter]:
    """ULPT adapters moved off their initialization, so every adapter steers the model differently."""
    adapters = []
    for i in range(count):
        adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=n_tokens, rank=rank, seed=10_000 + i), hidden)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        adapters.append(adapter)
    return adapters


def without_eos(model: ulpt.BaseModel) -> ulpt.BaseModel:
    """Every request then generates exactly max_tokens, in every mode: equal work to compare."""
    model.eos_ids = {-1}
    return model


def load_model(name: str, tiny_root: Path) -> ulpt.BaseModel:
    if name == "tiny":
        return without_eos(ulpt.load_base_model(build_tiny_model(tiny_root / "llama", "llama")))
    return without_eos(ulpt.load_base_model(name))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def schedule(mode: str, requests: list[Request], batch: int) -> list[list[Request]]:
    """The batches each mode runs, in order."""
    if mode == "solo":
        return [[r] for r in requests]
    arrival = [requests[i : i + batch] for i in range(0, len(requests), batch)]
    if mode in ("base", "mixed"):
        return arrival
    groups: list[list[Request]] = []
    for chunk in arrival:
        by_adapter: dict[int, list[Request]] = {}
        for r in chunk:
            by_adapter.setdefault(r.adapter, []).append(r)
        groups.extend(by_adapter.values())
    return groups


# ---- engine ------------------------------------------------------------------------------------


def run_engine_modes(
    runs: Sequence[tuple[str, str, Engine]], requests: list[Request], batch: int, solo_limit: int = 0
) -> dict[str, ModeResult]:
    """Run the modes INTERLEAVED, arrival batch by arrival batch, each on its own clock.

    On a shared machine the load drifts over minutes; interleaving gives every mode the same
    conditions, which makes the ratios trustworthy even when absolute numbers are noisy.
    Latency of a request = its mode's clock when its batch finished (all arrived at t=0).
    `runs` are (name, mode, engine): the same mode may run on engines with different settings.
    """
    modes = [name for name, _, _ in runs]
    clock = dict.fromkeys(modes, 0.0)
    done: dict[str, dict[int, float]] = {m: {} for m in modes}
    tokens = dict.fromkeys(modes, 0)
    prefill = dict.fromkeys(modes, 0.0)
    decode = dict.fromkeys(modes, 0.0)
    batches = dict.fromkeys(modes, 0)
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        for name, mode, engine in runs:
            limited = solo_limit and mode in ("solo", "grouped")
            todo = [r for r in chunk if r.index < solo_limit] if limited else chunk
            for group in schedule(mode, todo, batch):
                n_tokens, first_s, rest_s = run_engine_batch(engine, mode, group)
                tokens[name] += n_tokens
                prefill[name] += first_s
                decode[name] += rest_s
                clock[name] += first_s + rest_s
                batches[name] += 1
                for r in group:
                    done[name][r.index] = clock[name]
    out = {}
    for name in modes:
        latencies = list(done[name].values())
        out[name] = ModeResult(
            name,
            len(latencies),
            tokens[name],
            clock[name],
            tokens[name] / clock[name],
            percentile(latencies, 50),
            percentile(latencies, 99),
            batches[name],
            len(latencies) / batches[name],
            prefill[name],
            decode[name],
        )
    return out


def run_engine_batch(engine: Engine, mode: str, group: list[Request]) -> tuple[int, float, float]:
    """(tokens, seconds to the first token, seconds for the remaining steps) of one batch."""
    items = []
    for r in group:
        params = ulpt.SamplingParams(max_new_tokens=r.max_tokens)
        if mode == "base":
            items.append(BatchItem(r.text, params))
        else:
            key = f"adapter-{r.adapter}"
            items.append(BatchItem(r.text, params, key, engine.cache.get_sync(key, _unreachable)))
    tokens = 0
    t0 = time.perf_counter()
    first_s = 0.0
    for step in engine.steps(items):
        if not tokens:
            first_s = time.perf_counter() - t0
        tokens += len(step)
    return tokens, first_s, time.perf_counter() - t0 - first_s


def _unreachable() -> ulpt.Adapter:
    raise AssertionError("adapters are preloaded into the cache before measuring")


def engine_benchmark(args: argparse.Namespace, requests: list[Request], tiny_root: Path) -> dict[str, Any]:
    model = load_model(args.model, tiny_root)
    adapters = make_adapters(args.adapters, model.hidden_size, args.n_tokens, args.rank)
    out: dict[str, Any] = {"model": args.model, "hidden_size": model.hidden_size, "modes": {}}
    engines = {}
    for prefix_cache in (True, False) if args.compare_prefix else (True,):
        engine = Engine.create(model, ServeConfig(model=args.model, prefix_cache=prefix_cache))
        t0 = time.perf_counter()
        for i, adapter in enumerate(adapters):  # cold start: fetch (here: in memory) + materialize + prefix
            engine.cache.get_sync(f"adapter-{i}", lambda a=adapter: a)
        keys = [f"adapter-{i}" for i in range(len(adapters))]
        engine.cache.prompts([(k, engine.cache.get_sync(k, _unreachable)) for k in keys])
        stats = engine.cache.stats()
        engines[prefix_cache] = engine
        if prefix_cache:
            out["adapter_cache"] = {
                "materialize_and_prefix_64_adapters_s": time.perf_counter() - t0,
                "hot_bytes_per_adapter": stats.hot_bytes / max(1, stats.hot_count),
                "compact_bytes_per_adapter": stats.compact_bytes / max(1, stats.compact_count),
                "prompt_bytes_per_adapter": args.n_tokens * model.hidden_size * 4,
            }
    runs = [(mode, mode, engines[True]) for mode in MODES]
    if False in engines:
        runs.insert(2, ("mixed_no_prefix_cache", "mixed", engines[False]))
    # Warm-up: a few batches so first-call costs (allocations, kernels) do not land in one mode.
    run_engine_modes(
        [("w1", "mixed", engines[True]), ("w2", "solo", engines[True])], requests[:4], args.batch
    )
    for name, result in run_engine_modes(runs, requests, args.batch, args.solo_limit).items():
        out["modes"][name] = asdict(result)
        print(
            f"  engine {name:24s} {result.tokens_per_s:8.1f} tok/s  p50 {result.p50_latency_s:7.2f} s",
            flush=True,
        )
    out["ratios"] = ratios(out["modes"])
    out["memory_10k_adapters"] = memory_benchmark(model, args)
    print(f"  memory: {out['memory_10k_adapters']}", flush=True)
    return out


def memory_benchmark(model: ulpt.BaseModel, args: argparse.Namespace, count: int = 10_000) -> dict[str, Any]:
    """RSS of this process before and after a replica-sized cache takes `count` distinct adapters."""
    import gc

    import psutil

    process = psutil.Process()
    engine = Engine.create(model, ServeConfig(model=args.model, hot_cache_count=args.batch))
    gc.collect()
    before = process.memory_info().rss
    started = time.perf_counter()
    for i in range(count):
        spec = ulpt.AdapterSpec(n_tokens=args.n_tokens, rank=args.rank, seed=i)
        adapter = ulpt.Adapter.create(spec, model.hidden_size)
        compact = engine.cache.get_sync(f"m{i}", lambda a=adapter: a)
        if i % args.batch == 0:  # keep a hot set materialized, as serving would
            engine.cache.prompts([(f"m{i}", compact)])
    gc.collect()
    stats = engine.cache.stats()
    return {
        "adapters": count,
        "load_s": time.perf_counter() - started,
        "rss_growth_mb": (process.memory_info().rss - before) / 2**20,
        "compact_count": stats.compact_count,
        "compact_mb": stats.compact_bytes / 2**20,
        "hot_count": stats.hot_count,
        "hot_mb": stats.hot_bytes / 2**20,
        "rss_mb": process.memory_info().rss / 2**20,
    }


def ratios(modes: dict[str, Any]) -> dict[str, float]:
    tps = {k: v["tokens_per_s"] for k, v in modes.items()}
    out = {
        "mixed_over_base": tps["mixed"] / tps["base"],
        "mixed_over_grouped": tps["mixed"] / tps["grouped"],
        "mixed_over_solo": tps["mixed"] / tps["solo"],
    }
    if "mixed_no_prefix_cache" in tps:
        out["prefix_cache_speedup"] = tps["mixed"] / tps["mixed_no_prefix_cache"]
    return out


# ---- HTTP --------------------------------------------------------------------------------------


def _http_model_factory(name: str, tiny_dir: str) -> ulpt.BaseModel:
    """Runs in the replica (pickled by value with this script): the same EOS-less model as the engine."""
    import ulpt as _ulpt

    model = _ulpt.load_base_model(tiny_dir if name == "tiny" else name)
    model.eos_ids = {-1}
    return model


async def _http_mode(
    base_url: str, mode: str, requests: list[Request], concurrency: int, base_name: str
) -> tuple[list[float], int, float]:
    import httpx

    queue: asyncio.Queue[Request] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            r = queue.get_nowait()
            model = base_name if mode == "base" else f"adapter-{r.adapter}"
            headers = {"serve_multiplexed_model_id": model} if mode == "grouped" else {}
            body = {"model": model, "prompt": r.text, "max_tokens": r.max_tokens, "temperature": 0}
            t0 = time.perf_counter()
            answer = await http.post(f"{base_url}/v1/completions", json=body, headers=headers)
            answer.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += answer.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies, tokens, time.perf_counter() - started


def http_benchmark(args: argparse.Namespace, requests: list[Request], tiny_root: Path) -> dict[str, Any]:
    from functools import partial

    from ray import serve

    from ulpt.config import ensure_ray
    from ulpt.sdk import Client
    from ulpt_serving.app import Dependencies, build_application

    home = Path(tempfile.mkdtemp(prefix="ulpt-bench-"))
    tiny_dir = str(tiny_root / "llama")
    model = load_model(args.http_model, tiny_root)
    base_name = "tiny" if args.http_model == "tiny" else args.http_model
    with Client(home=home) as client:
        for i, adapter in enumerate(
            make_adapters(args.adapters, model.hidden_size, args.n_tokens, args.rank)
        ):
            client.adapters.register(adapter, name=f"adapter-{i}", base_model=base_name)
    del model
    port = _free_port()
    config = ServeConfig(
        model=args.http_model,
        served_model_name=base_name,
        home=str(home),
        auth=False,
        port=port,
        num_cpus=0,
        torch_threads=args.threads,
        max_batch_size=args.batch,
        batch_wait_timeout_s=args.batch_wait,
        max_ongoing_requests=max(2 * args.batch, args.concurrency),
        max_queued_requests=10 * len(requests),
        log_requests=False,
    )
    ensure_ray(num_cpus=os.cpu_count())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deps = Dependencies(model_factory=partial(_http_model_factory, args.http_model, tiny_dir))
    serve.run(build_application(config, deps), name="bench", route_prefix="/")
    handle = serve.get_app_handle("bench")
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"model": args.http_model, "concurrency": args.concurrency, "modes": {}}
    acc = {
        m: {"latencies": [], "tokens": 0, "wall": 0.0, "batches": 0, "compute": 0.0, "distinct": 0}
        for m in MODES
    }
    try:
        asyncio.run(_http_mode(url, "mixed", requests[: args.batch], args.concurrency, base_name))  # warm-up
        # Interleaved like the engine: each arrival wave of `batch` requests goes through every mode in turn.
        for start in range(0, len(requests), args.batch):
            chunk = requests[start : start + args.batch]
            for mode in MODES:
                limited = args.solo_limit and mode in ("solo", "grouped")
                todo = [r for r in chunk if r.index < args.solo_limit] if limited else chunk
                if not todo:
                    continue
                before = handle.stats.remote().result()
                concurrency = 1 if mode == "solo" else args.concurrency
                latencies, tokens, wall = asyncio.run(_http_mode(url, mode, todo, concurrency, base_name))
                after = handle.stats.remote().result()
                batches = after["batches"] - before["batches"]
                recent = after["recent_batches"][-batches:] if batches else []
                a = acc[mode]
                a["latencies"] += latencies
                a["tokens"] += tokens
                a["wall"] += wall
                a["batches"] += batches
                a["compute"] += after["compute_s"] - before["compute_s"]
                a["distinct"] = max([a["distinct"], *(b["distinct_adapters"] for b in recent)])
        for mode, a in acc.items():
            n = len(a["latencies"])
            result = ModeResult(
                mode,
                n,
                a["tokens"],
                a["wall"],
                a["tokens"] / a["wall"],
                percentile(a["latencies"], 50),
                percentile(a["latencies"], 99),
                a["batches"],
                n / max(1, a["batches"]),
            )
            out["modes"][mode] = asdict(result) | {
                "max_distinct_adapters_in_a_batch": a["distinct"],
                "replica_compute_s": a["compute"],
            }
            print(f"  http   {mode:24s} {result.tokens_per_s:8.1f} tok/s  p50 {result.p50_latency_s:7.2f} s")
    finally:
        serve.shutdown()
    out["ratios"] = ratios(out["modes"])
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- report ------------------------------------------------------------------------------------


def table(title: str, section: dict[str, Any]) -> str:
    head = f"{'mode':24s} {'tok/s':>9s} {'p50 s':>8s} {'p99 s':>8s} {'rows/batch':>10s} {'wall s':>8s}"
    lines = [title, head + f" {'prefill s':>9s} {'decode s':>9s} {'model s':>8s}"]
    for name, m in section["modes"].items():
        model_s = m.get("replica_compute_s", m["prefill_s"] + m["decode_s"])
        lines.append(
            f"{name:24s} {m['tokens_per_s']:9.1f} {m['p50_latency_s']:8.2f} {m['p99_latency_s']:8.2f} "
            f"{m['mean_rows_per_batch']:10.1f} {m['wall_s']:8.1f} {m['prefill_s']:9.1f} {m['decode_s']:9.1f} "
            f"{model_s:8.1f}"
        )
    r = section["ratios"]
    lines.append(
        f"ratios: mixed/base {r['mixed_over_base']:.2f} (goal >= 0.90), "
        f"mixed/grouped {r['mixed_over_grouped']:.1f}x (goal >= 5), mixed/solo {r['mixed_over_solo']:.1f}x"
        + (f", prefix cache {r['prefix_cache_speedup']:.2f}x" if "prefix_cache_speedup" in r else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--load" in argv:  # the load benchmark has options of its own
        sys.path.insert(0, str(Path(__file__).parent))
        from serving_load import main as load_main

        return load_main([a for a in argv if a != "--load"])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="engine model: smollm2-135m or tiny")
    parser.add_argument(
        "--http-model", default="tiny", help="model behind the HTTP run: tiny or smollm2-135m"
    )
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP run")
    parser.add_argument("--no-engine", action="store_true", help="skip the engine run")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="max rows per batch")
    parser.add_argument("--batch-wait", type=float, default=0.05, help="Serve batch_wait_timeout_s")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent HTTP clients (solo uses 1)")
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n-tokens", type=int, default=10, help="adapter prompt length n")
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)"
    )
    parser.add_argument(
        "--solo-limit", type=int, default=0, help="run grouped/solo on the first N requests only"
    )
    parser.add_argument("--compare-prefix", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quick", action="store_true", help="tiny everything, for a smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.http_model, args.requests, args.max_tokens = "tiny", "tiny", 64, 8
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    requests = make_requests(args.requests, args.adapters, args.min_words, args.max_words, args.max_tokens)
    tiny_root = Path(tempfile.mkdtemp(prefix="ulpt-bench-models-"))
    build_tiny_model(tiny_root / "llama", "llama")
    out = Path(args.out)
    # Sections are kept per model and merged into an existing file, so engine and HTTP runs
    # (minutes each) can be made separately: --no-http, then --no-engine.
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report.update(
        {
            "benchmark": "serving",
            "notes": [
                "EOS disabled: every request generates exactly max_tokens in all modes (equal work); greedy.",
                "Engine: modes run interleaved per arrival batch, each on its own clock (same machine load).",
                "Engine latency = completion time since all requests arrived at t=0 (includes queueing).",
                "grouped = each arrival batch split per adapter, as Serve does for multiplexed model ids.",
                "model s = time in the model (engine: prefill + decode; HTTP: the replica's decode thread).",
            ],
        }
    )
    run_info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg_at_start": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    if not args.no_engine:
        print(f"engine: {args.model}, {args.requests} requests, {args.adapters} adapters, batch {args.batch}")
        section = engine_benchmark(args, requests, tiny_root) | {"run": run_info}
        report.setdefault("engine", {})[args.model] = section
        print(table(f"engine ({args.model})", section), flush=True)
    if not args.no_http:
        print(f"http: {args.http_model}, concurrency {args.concurrency}", flush=True)
        section = http_benchmark(args, requests, tiny_root) | {"run": run_info}
        report.setdefault("http", {})[args.http_model] = section
        print(table(f"http ({args.http_model}, {args.concurrency} clients)", section), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
