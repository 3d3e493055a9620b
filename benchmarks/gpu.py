"""GPU benchmark: packed training and mixed-adapter serving on one device, the base model in bf16.

    python benchmarks/gpu.py                         # SmolLM2-135M, bf16, CUDA: about 5 minutes on an H200
    python benchmarks/gpu.py --device cpu --quick    # the same code on a tiny random model, about a minute

(a) Packed training. K fits (K = 1, 16, 256, 1,024) train together, each with its own rows and
    adapter, packed into shared forward/backward passes of at most `--rows-per-forward` rows. K = 1
    is one fit at a time; the table gives fits per hour at each K and the ratio to K = 1, and the
    achieved TFLOP/s as `gpu_flops.py` counts them (non-embedding parameters on every token, the LM
    head only on the target positions whose logits are kept; tokenization is done before the clock
    starts), against the dense peak of the exact device and dtype where it is known.
(b) Serving. The replica's engine (the decode loop, no HTTP) at 64 and 1,024 distinct adapters:
    tokens/s of batches that mix adapters ("mixed", as ulpt serves them), of the base model alone
    ("base", the upper bound) and of batches split per adapter ("grouped", what per-model
    multiplexing gives), with EOS off so every mode generates the same tokens. Modes are interleaved
    batch by batch (benchmarks/serving.py), so the ratios hold even when absolute numbers drift.

Writes benchmarks/results/gpu.json (or `--out`) and prints one table. The accuracy tasks with a
paper-sized budget are `benchmarks/accuracy.py`'s job; they do not fit this script's 8 minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from gpu_flops import device_name, peak_tflops, training_flops

import ulpt
from ulpt.models.tiny import build_tiny_model
from ulpt.training import FitRequest, FitState, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit
from ulpt_serving import Engine, ServeConfig

HERE = Path(__file__).resolve().parent
FULL = {"fits": (1, 16, 256, 1024), "steps": 10, "adapters": (64, 1024), "requests": 2048, "max_tokens": 32}
QUICK = {"fits": (1, 4, 16), "steps": 3, "adapters": (8, 32), "requests": 64, "max_tokens": 8}
LABELS = ("positive", "negative")


def _serving_benchmark() -> Any:
    """benchmarks/serving.py as a module: its request sets, adapters and interleaved engine runs."""
    spec = importlib.util.spec_from_file_location("serving_benchmark", HERE / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def fit_rows(fit: int, count: int = 16) -> list[dict[str, str]]:
    """A fit's own small task: a review whose label depends on the fit (a user's taste)."""
    rng = random.Random(fit)
    words = "good bad quiet loud clean dirty fast slow warm cold friendly rude cheap pricey".split()
    rows = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        rows.append({"input": f"Review: {text}\nVerdict:", "target": f" {LABELS[(fit + len(text)) % 2]}"})
    return rows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_benchmark(
    model: ulpt.BaseModel, args: argparse.Namespace, sizes: dict[str, Any]
) -> dict[str, Any]:
    params = sum(p.numel() for p in model.hf.parameters())
    peak = peak_tflops(device_name(model.device), model.token_embeddings.dtype)
    config = {"steps": sizes["steps"], "lr": 0.1, "batch_size": args.batch_size, "max_grad_norm": 1.0}
    n_tokens = 10
    spec: dict[str, Any] = {"method": "ulpt", "n_tokens": n_tokens, "rank": 2}

    def requests(count: int) -> list[FitRequest]:
        return [
            FitRequest(
                f"fit-{i}", ulpt.AdapterSpec(**spec, seed=i), fit_rows(i), (), TrainConfig(**config, seed=i)
            )
            for i in range(count)
        ]

    def prepared(count: int) -> list[FitState]:  # tokenized here, before any clock starts
        return [prepare_fit(model, r) for r in requests(count)]

    # Warm-up: the device's first kernels and allocations do not land in K = 1.
    PackedTrainer(model, max_rows_per_forward=args.rows_per_forward).run(prepared(2))
    rows: list[dict[str, Any]] = []
    for count in sizes["fits"]:
        fits = prepared(count)
        tokens = (
            sum(
                statistics.mean(
                    f.adapter.spec.n_tokens + len(ex.input_ids) + len(ex.target_ids) for ex in f.train
                )
                for f in fits
            )
            * args.batch_size
            * sizes["steps"]
        )  # rows drawn per step x mean row length
        flops = training_flops(model, fits)
        trainer = PackedTrainer(model, max_rows_per_forward=args.rows_per_forward)
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        synchronize(model.device)
        started = time.perf_counter()
        trainer.run(fits)
        synchronize(model.device)
        seconds = time.perf_counter() - started
        failed = [f.key for f in fits if f.status != "done"]
        achieved = flops / seconds / 1e12
        rows.append(
            {
                "fits": count,
                "seconds": round(seconds, 3),
                "failed": len(failed),
                "fits_per_hour": round(3600 * count / seconds, 1),
                "tokens": round(tokens),
                "fit_step_us": round(1e6 * seconds / (count * sizes["steps"]), 1),
                "achieved_tflops": round(achieved, 4),
                "fraction_of_peak": round(achieved / peak, 4) if peak else None,
                "peak_memory_gb": round(torch.cuda.max_memory_allocated(model.device) / 1e9, 2)
                if model.device.type == "cuda"
                else None,
            }
        )
        print(f"  training K={count:5d}: {rows[-1]}", flush=True)
    one = rows[0]["fits_per_hour"]
    for row in rows:
        row["vs_one_at_a_time"] = round(row["fits_per_hour"] / one, 2)
    return {"parameters": params, "steps": sizes["steps"], "batch_size": args.batch_size, "runs": rows}


def serving_benchmark(
    model: ulpt.BaseModel, args: argparse.Namespace, sizes: dict[str, Any]
) -> dict[str, Any]:
    bench = _serving_benchmark()
    bench.without_eos(model)
    out: dict[str, Any] = {"batch": args.serve_batch, "max_tokens": sizes["max_tokens"], "runs": []}
    for count in sizes["adapters"]:
        requests = bench.make_requests(max(sizes["requests"], 2 * count), count, 4, 24, sizes["max_tokens"])
        config = ServeConfig(model=args.model, max_batch_size=args.serve_batch, hot_cache_bytes=4 << 30)
        engine = Engine.create(model, config)
        for i, adapter in enumerate(bench.make_adapters(count, model.hidden_size, 10, 2)):
            engine.cache.get_sync(f"adapter-{i}", lambda a=adapter: a)
        runs = [(mode, mode, engine) for mode in ("base", "mixed", "grouped")]
        bench.run_engine_modes(runs, requests[: args.serve_batch], args.serve_batch)  # warm-up
        solo_limit = min(len(requests), 4 * args.serve_batch)  # grouped runs one batch per adapter
        modes = bench.run_engine_modes(runs, requests, args.serve_batch, solo_limit)
        tps = {name: result.tokens_per_s for name, result in modes.items()}
        run = {
            "adapters": count,
            "requests": len(requests),
            "grouped_requests": modes["grouped"].requests,
            "tokens": {name: result.generated_tokens for name, result in modes.items()},
            "tokens_per_s": {name: round(value, 1) for name, value in tps.items()},
            "mixed_over_base": round(tps["mixed"] / tps["base"], 3),
            "mixed_over_grouped": round(tps["mixed"] / tps["grouped"], 2),
        }
        out["runs"].append(run)
        print(f"  serving {count:5d} adapters: {run}", flush=True)
    return out


def table(results: dict[str, Any]) -> str:
    train, serve = results["training"], results["serving"]
    lines = [
        f"{results['device']} ({results['dtype']}), {results['model']}",
        "",
        f"(a) packed training, {train['steps']} steps of {train['batch_size']} rows per fit",
        "| fits per forward | seconds | fits/hour | vs one at a time | us per fit-step | TFLOP/s | of peak |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in train["runs"]:
        peak = f"{100 * r['fraction_of_peak']:.1f}%" if r["fraction_of_peak"] is not None else "n/a"
        lines.append(
            f"| {r['fits']} | {r['seconds']:.2f} | {r['fits_per_hour']:,.0f} | {r['vs_one_at_a_time']:.2f}x "
            f"| {r['fit_step_us']:,.0f} | {r['achieved_tflops']:.3f} | {peak} |"
        )
    lines += [
        "",
        f"(b) serving engine, batches of {serve['batch']}, {serve['max_tokens']} tokens per request, EOS off",
        "| distinct adapters | base tok/s | mixed tok/s | grouped tok/s | mixed / base | mixed / grouped |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in serve["runs"]:
        tps = r["tokens_per_s"]
        lines.append(
            f"| {r['adapters']} | {tps['base']:,.0f} | {tps['mixed']:,.0f} | {tps['grouped']:,.0f} "
            f"| {r['mixed_over_base']:.2f}x | {r['mixed_over_grouped']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", default="auto", help="the base model's dtype (auto: bf16 on CUDA)")
    parser.add_argument("--model", default=None, help="default: smollm2-135m, or a tiny model with --quick")
    parser.add_argument("--quick", action="store_true", help="small sizes: a minute on a CPU")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per fit per step")
    parser.add_argument("--rows-per-forward", type=int, default=None, help="default 256 (64 with --quick)")
    parser.add_argument("--serve-batch", type=int, default=None, help="default 128 (16 with --quick)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu --quick for the CPU run")
    sizes = QUICK if args.quick else FULL
    args.rows_per_forward = args.rows_per_forward or (64 if args.quick else 256)
    args.serve_batch = args.serve_batch or (16 if args.quick else 128)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            args.model = str(build_tiny_model(Path(tmp) / "tiny", "llama")) if args.quick else "smollm2-135m"
        torch.set_num_threads(max(1, torch.get_num_threads()))
        started = time.perf_counter()
        model = ulpt.load_base_model(args.model, device=device, dtype=args.dtype)
        load_s = time.perf_counter() - started
        name = device_name(device)
        results: dict[str, Any] = {
            "device": name,
            "peak_tflops": peak_tflops(name, model.token_embeddings.dtype),
            "dtype": str(model.token_embeddings.dtype).removeprefix("torch."),
            "model": "tiny-llama" if args.quick and args.model.startswith(tmp) else args.model,
            "quick": args.quick,
            "torch": torch.__version__,
            "load_s": round(load_s, 2),
            "training": training_benchmark(model, args, sizes),
            "serving": serving_benchmark(model, args, sizes),
        }
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.out} in {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
