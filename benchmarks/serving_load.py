"""Serving under load: Poisson arrivals, varied prompt and output lengths, EOS on, many adapters.

The same requests (token ids, max_tokens, adapter, arrival time) run through three engines, one after
another, in one process on one machine:

  (a) native     ulpt's own engine behind a static batcher as the replica runs it (`DecodeLoop`: a
                 batch forms within `--batch-wait`, runs until its last row ends; arrivals wait)
  (b) vllm-mixed vLLM's continuous batching, each request `adapter prompt ⊕ token embeddings`
  (c) vllm-base  vLLM on the same requests as token ids, no adapter (the upper bound)

At each rate (requests/s) and adapter count: sustained throughput (generated tokens / makespan), p50 and
p99 time to first token, p99 latency, and the highest rate whose p99 latency stays under `--p99-bound`.
Greedy decoding, so (a) and (b) generate the same tokens (tests/test_vllm_engine.py); (c) has no
adapter, so its outputs (and lengths, EOS being on) differ. Then vLLM's prefix cache: how many prompt
positions a repeated request finds cached, with the same adapter and with another one.

    python benchmarks/serving.py --load --model smollm2-135m             # the full run
    python benchmarks/serving.py --load --quick                          # tiny model, minutes

Writes benchmarks/results/serving_load.json and docs/serving-load.png.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

import ulpt
from ulpt.models import SamplingParams
from ulpt.models.tiny import build_tiny_model
from ulpt_serving import BatchItem, Engine, ServeConfig
from ulpt_serving.cache import CompactAdapter
from ulpt_serving.engine import RowFailure
from ulpt_serving.metrics import ServingMetrics

T = TypeVar("T")
ENGINES = ("native", "vllm-mixed", "vllm-base")


@dataclass(frozen=True)
class LoadRequest:
    arrival_s: float
    token_ids: tuple[int, ...]
    max_tokens: int
    adapter: int


@dataclass
class Timing:
    first_s: float | None = None
    done_s: float = 0.0
    tokens: int = 0


@dataclass
class RunResult:
    engine: str
    rate: float
    adapters: int
    requests: int
    tokens: int
    makespan_s: float
    throughput_tok_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p99_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def make_load(
    model: ulpt.BaseModel, count: int, rate: float, adapters: int, prompt: tuple[int, int],
    output: tuple[int, int], seed: int = 0,
) -> list[LoadRequest]:  # fmt: skip
    """`count` requests with exponential gaps of mean 1/rate; prompt and output lengths uniform."""
    rng = random.Random(seed)
    vocab = len(model.tokenizer)
    special = set(model.eos_ids) | {model.pad_id}
    ordinary = [i for i in range(min(vocab, 4096)) if i not in special]
    t, out = 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate)
        ids = tuple(rng.choice(ordinary) for _ in range(rng.randint(*prompt)))
        out.append(LoadRequest(t, ids, rng.randint(*output), rng.randrange(adapters)))
    return out


def make_adapters(count: int, hidden: int) -> list[CompactAdapter]:
    """ULPT adapters (n=10, r=2) moved off their initialization, as the catalog would hand them over."""
    out = []
    for i in range(count):
        adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=10, rank=2, seed=20_000 + i), hidden)
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        out.append(CompactAdapter.from_adapter(adapter))
    return out


def items(
    load: list[LoadRequest], adapters: list[CompactAdapter] | None, ignore_eos: bool = False
) -> list[BatchItem]:
    return [
        BatchItem(
            "",
            SamplingParams(max_new_tokens=r.max_tokens, ignore_eos=ignore_eos),
            f"a{r.adapter}" if adapters else None,
            adapters[r.adapter] if adapters else None,
            token_ids=r.token_ids,
        )
        for r in load
    ]


def summarize(
    engine: str, rate: float, n_adapters: int, load: list[LoadRequest], timings: list[Timing]
) -> RunResult:
    first = min(r.arrival_s for r in load)
    makespan = max(t.done_s for t in timings) - first
    tokens = sum(t.tokens for t in timings)
    ttft = [(t.first_s if t.first_s is not None else t.done_s) - r.arrival_s for r, t in zip(load, timings)]
    latency = [t.done_s - r.arrival_s for r, t in zip(load, timings)]
    return RunResult(
        engine, rate, n_adapters, len(load), tokens, makespan, tokens / makespan,
        percentile(ttft, 50), percentile(ttft, 99), percentile(latency, 99),
    )  # fmt: skip


# ---- (a) ulpt's engine behind a static batcher -------------------------------------------------


async def run_native(
    engine: Engine, load: list[LoadRequest], rows: list[BatchItem], batch: int, wait_s: float
) -> list[Timing]:
    """The replica's `DecodeLoop` without Serve: a batch forms within `wait_s` of its first request
    (up to `batch` rows) and runs until its last row ends; requests arriving meanwhile wait."""
    timings = [Timing() for _ in load]
    queue: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    start = time.perf_counter()

    async def arrive() -> None:
        for i, r in enumerate(load):
            await asyncio.sleep(max(0.0, r.arrival_s - (time.perf_counter() - start)))
            queue.put_nowait(i)

    async def decode() -> None:
        left = len(load)
        while left:
            chosen = [await queue.get()]
            deadline = loop.time() + wait_s
            while len(chosen) < batch:
                try:
                    chosen.append(await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            steps = engine.steps([rows[i] for i in chosen])
            while (step := await loop.run_in_executor(None, next, steps, None)) is not None:
                now = time.perf_counter() - start
                for k, token in step.items():
                    t = timings[chosen[k]]
                    if isinstance(token, RowFailure):
                        raise token.error
                    t.tokens += 1
                    t.first_s = now if t.first_s is None else t.first_s
                    t.done_s = now
            left -= len(chosen)

    await asyncio.gather(arrive(), decode())
    return timings


# ---- (b), (c) vLLM -----------------------------------------------------------------------------


async def run_vllm(loop_: Any, load: list[LoadRequest], rows: list[BatchItem]) -> list[Timing]:
    """Each request joins vLLM at its arrival time; vLLM batches whatever is in flight at each step."""
    timings = [Timing() for _ in load]
    start = time.perf_counter()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, load[i].arrival_s - (time.perf_counter() - start)))
        t = timings[i]
        async for token in loop_.rows(rows[i]):
            if isinstance(token, RowFailure):
                raise token.error
            now = time.perf_counter() - start
            t.tokens += 1
            t.first_s = now if t.first_s is None else t.first_s
            t.done_s = now
        t.done_s = max(t.done_s, time.perf_counter() - start)

    await asyncio.gather(*(one(i) for i in range(len(load))))
    return timings


async def prefix_cache_hits(
    vllm_engine: Any, model: ulpt.BaseModel, adapters: list[CompactAdapter]
) -> dict[str, Any]:
    """Prompt positions vLLM finds cached when a request repeats: same adapter, other adapter, none."""
    ids = tuple(model.encode(" ".join(["the movie was good and the staff friendly"] * 40)))[:300]
    params = SamplingParams(max_new_tokens=1)

    async def cached(adapter: int | None, tag: str) -> int:
        row = BatchItem("", params, None, None, token_ids=ids)
        prompt = (
            adapters[adapter].materialize().to(model.token_embeddings.dtype) if adapter is not None else None
        )
        from ulpt_serving.vllm_engine import vllm_sampling

        outputs = [
            out
            async for out in vllm_engine.llm.generate(
                vllm_engine.engine_input(row, prompt), vllm_sampling(params, model.eos_ids), f"prefix-{tag}"
            )
        ]
        return int(outputs[-1].num_cached_tokens or 0)

    first = await cached(0, "first")
    same = await cached(0, "same")
    other = await cached(1, "other")
    base1 = await cached(None, "base1")
    base2 = await cached(None, "base2")
    return {
        "prompt_positions": len(ids) + 10,
        "first_request": first,
        "same_adapter_again": same,
        "other_adapter_same_text": other,
        "base_first": base1,
        "base_again": base2,
    }


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]


def load_model(name: str, root: Path) -> ulpt.BaseModel:
    if name == "tiny":  # vLLM's CPU attention needs heads of 32 or more: 128 wide, 2 heads
        return ulpt.load_base_model(build_tiny_model(root / "llama", "llama", hidden_size=128, num_heads=2))
    return ulpt.load_base_model(name, dtype="float32")


def run(args: Any) -> dict[str, Any]:
    """Every (adapters, rate) cell through the three engines; the prefix-cache measurement last."""
    import tempfile

    from ulpt_serving.vllm_engine import VllmDecodeLoop, VllmEngine

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="ulpt-load-"))
    model = load_model(args.model, root)
    folder = str(model.path)
    config = ServeConfig(
        model=folder, dtype="float32", max_batch_size=args.batch, vllm_cpu_kv_cache_gib=args.kv_gib,
        vllm_cache_root=str(root / "vllm"), hot_cache_count=max(args.adapter_counts) + 1,
    )  # fmt: skip
    native = Engine.create(model, config.model_copy(update={"engine": "native"}))
    thread = LoopThread()

    async def start() -> VllmEngine:
        return VllmEngine.create(model, config)

    started = time.perf_counter()
    vllm_engine = thread.run(start())
    start_s = time.perf_counter() - started
    decode = VllmDecodeLoop(vllm_engine, ServingMetrics(export=False))
    results: list[RunResult] = []
    all_adapters = make_adapters(max(args.adapter_counts), model.hidden_size)
    thread.run(
        run_vllm(
            decode,
            make_load(model, 4, 10.0, 1, (8, 16), (4, 8)),
            items(make_load(model, 4, 10.0, 1, (8, 16), (4, 8)), None),
        )
    )
    for n_adapters in args.adapter_counts:
        adapters = all_adapters[:n_adapters]
        for rate in args.rates:
            load = make_load(
                model,
                args.requests,
                rate,
                n_adapters,
                tuple(args.prompt),
                tuple(args.output),
                seed=int(rate * 1000) + n_adapters,
            )
            for engine in ENGINES:
                if engine == "native":
                    timings = thread.run(
                        run_native(native, load, items(load, adapters), args.batch, args.batch_wait)
                    )
                else:
                    timings = thread.run(
                        run_vllm(decode, load, items(load, adapters if engine == "vllm-mixed" else None))
                    )
                result = summarize(engine, rate, n_adapters, load, timings)
                results.append(result)
                r = result
                print(
                    f"{n_adapters:>5} adapters {rate:>6.2f}/s {engine:<10} {r.throughput_tok_s:8.1f} tok/s "
                    f"ttft p50 {r.ttft_p50_s:6.2f}s p99 {r.ttft_p99_s:6.2f}s "
                    f"latency p99 {r.latency_p99_s:7.2f}s",
                    flush=True,
                )
    hits = thread.run(prefix_cache_hits(vllm_engine, model, all_adapters))
    vllm_engine.shutdown()
    return {
        "model": args.model,
        "threads": args.threads,
        "vllm_start_s": start_s,
        "p99_bound_s": args.p99_bound,
        "results": [asdict(r) for r in results],
        "prefix_cache": hits,
    }


def goals(report: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The two goals, checked cell by cell: (b) >= 0.9x (c) at every rate; (b) >= 2x (a) sustained."""
    cells: dict[tuple[int, float], dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        cells.setdefault((r["adapters"], r["rate"]), {})[r["engine"]] = r
    out = []
    for (n, rate), by in sorted(cells.items()):
        b, c, a = by["vllm-mixed"], by["vllm-base"], by["native"]
        bc = b["throughput_tok_s"] / c["throughput_tok_s"]
        ba = b["throughput_tok_s"] / a["throughput_tok_s"]
        out.append((f"{n} adapters, {rate:g}/s: (b)/(c) throughput", bc >= 0.9, f"{bc:.2f}x"))
        out.append((f"{n} adapters, {rate:g}/s: (b)/(a) throughput", ba >= 2.0, f"{ba:.2f}x"))
    return out


def max_rate_under_bound(report: dict[str, Any]) -> dict[str, dict[int, float | None]]:
    """Per engine and adapter count: the highest rate measured whose p99 latency stays under the bound."""
    out: dict[str, dict[int, float | None]] = {}
    for r in report["results"]:
        best = out.setdefault(r["engine"], {}).get(r["adapters"])
        if r["latency_p99_s"] <= report["p99_bound_s"] and (best is None or r["rate"] > best):
            out[r["engine"]][r["adapters"]] = r["rate"]
        else:
            out[r["engine"]].setdefault(r["adapters"], best)
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["adapters"] for r in report["results"]})
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4), squeeze=False)
    for ax, n in zip(axes[0], counts):
        for engine in ENGINES:
            rows = sorted(
                (r for r in report["results"] if r["engine"] == engine and r["adapters"] == n),
                key=lambda r: r["rate"],
            )
            ax.plot(
                [r["rate"] for r in rows],
                [r["latency_p99_s"] for r in rows],
                marker="o",
                label=f"{engine} p99 latency",
            )
            ax.plot(
                [r["rate"] for r in rows],
                [r["ttft_p99_s"] for r in rows],
                marker="x",
                linestyle="--",
                label=f"{engine} p99 TTFT",
            )
        ax.axhline(report["p99_bound_s"], color="grey", linewidth=0.8)
        ax.set_xlabel("offered load (requests/s, Poisson)")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.set_title(f"{report['model']}, {n} adapters")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(report: dict[str, Any]) -> str:
    lines = [
        "| adapters | rate (req/s) | engine | tokens | throughput (tok/s) | TTFT p50 (s) | TTFT p99 (s) "
        "| latency p99 (s) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['adapters']} | {r['rate']:g} | {r['engine']} | {r['tokens']} | "
            f"{r['throughput_tok_s']:.1f} | {r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} | "
            f"{r['latency_p99_s']:.2f} |"
        )
    lines += ["", "| goal | met | measured |", "|---|---|---:|"]
    lines += [f"| {name} | {'met' if ok else 'not met'} | {value} |" for name, ok, value in goals(report)]
    lines += ["", f"Highest rate measured with p99 latency <= {report['p99_bound_s']:g} s:", ""]
    for engine, by_count in max_rate_under_bound(report).items():
        lines.append(
            f"- {engine}: "
            + ", ".join(
                f"{n} adapters: {rate if rate is not None else 'none'}"
                for n, rate in sorted(by_count.items())
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, a model folder, or tiny")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0], help="requests/s")
    parser.add_argument("--adapter-counts", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--requests", type=int, default=64, help="requests per (rate, adapters) cell")
    parser.add_argument("--prompt", type=int, nargs=2, default=[8, 256], help="prompt tokens, min max")
    parser.add_argument("--output", type=int, nargs=2, default=[4, 256], help="max_tokens, min max")
    parser.add_argument("--batch", type=int, default=32, help="rows per batch (native) / max_num_seqs (vLLM)")
    parser.add_argument(
        "--batch-wait", type=float, default=0.01, help="native batch wait (s), as ServeConfig"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of ulpt's engine (vLLM: one here)"
    )
    parser.add_argument("--kv-gib", type=float, default=2.0, help="vLLM's CPU key/value cache (GiB)")
    parser.add_argument(
        "--p99-bound", type=float, default=60.0, help="p99 latency bound (s) for the rate table"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 2 rates, 24 requests, shorter lengths"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving_load.json"))
    parser.add_argument("--plot", default=str(Path(__file__).parents[1] / "docs" / "serving-load.png"))
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.rates, args.requests = "tiny", [1.0, 4.0], 24
        args.prompt, args.output, args.adapter_counts = [8, 128], [4, 64], [64, 1024]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run(args) | {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_avg_at_start": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "plot")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, Path(args.plot))
    print(table(report))
    print(json.dumps(report["prefix_cache"], indent=2))
    print(f"wrote {out} and {args.plot}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
