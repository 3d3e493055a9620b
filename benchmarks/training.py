"""Bulk training benchmark: what packing fits into one Ray job buys, measured in one run on this machine.

(a) 1,000 tiny fits as ONE packed Ray Train job vs the naive Ray way, one Ray Train `fit()` per fit
    (a few single-fit jobs measured, then extrapolated to 1,000);
(b) K=64 fits on SmolLM2-135M packed in shared forward passes vs the same fits one after another in
    one process, same steps (the sequential side is measured on a subset and extrapolated);
(c) the 1,000-fit Ray job vs the same packed worker loop run in-process (no Ray): Ray's overhead;
(d) the 1,000-fit job on 1 vs 2 Ray Train workers;
(e) the per-fit cost of a packed step: 1,000 fits of 1 row vs 1 fit of 1,000 rows per step on the
    tiny model (same rows through the same forward/backward passes, interleaved in one run), printed
    as microseconds per fit-step and as the ratio of the two.

    PYTHONPATH=platform:jobs:serving .venv/bin/python benchmarks/training.py   # ~15 min on 2 CPUs
    PYTHONPATH=platform:jobs:serving .venv/bin/python benchmarks/training.py --skip tiny --skip smollm  # (e)

Prints a table and writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
WORDS = {
    "positive": "good great love happy clean fast".split(),
    "negative": "bad awful hate sad dirty slow".split(),
}


def review_rows(user: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(user)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        text = f"the {rng.choice(['movie', 'food', 'room'])} was {rng.choice(WORDS[label])}. A:"
        rows.append({"user_id": user, "text": text, "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_spec(model: Path, data: Path, steps: int, **overrides: Any) -> Any:
    from ulpt.jobspec import JobSpec

    return JobSpec.from_dict(
        {
            "base_model": str(model),
            "dataset": {"path": str(data), "input": "text", "target": "label", "group_by": "user_id"},
            "adapter": {"method": "ulpt", "n_tokens": 4, "rank": 2, "seed": 1, "seed_policy": "per_fit"},
            "train": {"steps": steps, "lr": 0.05, "batch_size": 2, "eval_every": 10_000},
            "name": "user-{user_id}",
            "fits_per_worker": 250,
            **overrides,
        }
    )


def loop_window(fits: list[Any]) -> float:
    """Seconds from the first claim to the last fit recorded: the workers' training loop, startup excluded."""
    start = min(f.started_at for f in fits if f.started_at)
    end = max(f.finished_at for f in fits if f.finished_at)
    return (end - start).total_seconds()


def ray_job(client: Any, spec: Any) -> dict[str, Any]:
    from ulpt.jobs_api import JobsAPI

    started = time.monotonic()
    job = JobsAPI(client).submit(spec)
    status = job.wait()
    wall = time.monotonic() - started
    fits = job.fits()
    assert status.status == "done" and status.counts["done"] == len(fits), status.to_dict()
    per_worker: dict[str, dict[str, float]] = {}
    for fit in fits:
        seen = per_worker.setdefault(fit.worker or "", {"cpu": 0.0, "rss": 0.0})
        seen["cpu"] = max(seen["cpu"], fit.timings.get("loop_cpu_s", 0.0))
        seen["rss"] = max(seen["rss"], fit.timings.get("peak_rss_mb", 0.0))
    return {
        "fits": len(fits),
        "wall_s": round(wall, 2),
        "trainer_fit_s": status.timings["train_s"],
        **{key: status.timings.get(key) for key in FIXED_PARTS},
        "loop_s": round(loop_window(fits), 2),
        "loop_cpu_s": round(sum(w["cpu"] for w in per_worker.values()), 2),
        "worker_peak_rss_mb": max(w["rss"] for w in per_worker.values()),
        "load_average": round(os.getloadavg()[0], 1),
    }


def in_process(client: Any, spec: Any) -> dict[str, Any]:
    """The Ray worker's code path (load the base, claim, fetch rows, train packed, register) without Ray."""
    from ulpt.jobs_api import JobsAPI
    from ulpt.jobspec import JobSpec
    from ulpt.models import load_base_model
    from ulpt_jobs.worker import FitRunner

    jobs = JobsAPI(client)
    handle = jobs.submit(spec, start=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.cpus_per_worker)  # what a Ray worker gets
    try:
        started = time.monotonic()
        stored = JobSpec.from_dict(handle.status().spec)
        model = load_base_model(stored.base_model)
        setup = time.monotonic() - started
        cpu = time.process_time()
        FitRunner(model, client.registry, handle.id, client.tenant, stored, "inprocess:0:rank0").run()
        cpu = time.process_time() - cpu
        total = time.monotonic() - started
    finally:
        torch.set_num_threads(threads)
    fits = handle.fits()
    assert all(f.status == "done" for f in fits)
    return {
        "fits": len(fits),
        "setup_s": round(setup, 2),
        "loop_s": round(loop_window(fits), 2),
        "loop_cpu_s": round(cpu, 2),
        "total_s": round(total, 2),
        "load_average": round(os.getloadavg()[0], 1),
    }


def fastest(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The least disturbed of repeated runs on a shared machine, with every run's time kept."""
    best = min(runs, key=lambda run: run[key])
    return {**best, f"all_{key}": [run[key] for run in runs]}


def tiny_benchmarks(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import ray

    from ulpt.config import LOCAL_RAY, ensure_ray
    from ulpt.models.tiny import build_tiny_model
    from ulpt.sdk import Client

    model = build_tiny_model(root / "tiny", "llama")
    data = write_jsonl(root / "users.jsonl", [r for u in range(args.fits) for r in review_rows(u, 6)])
    spec = job_spec(model, data, args.steps)
    out: dict[str, Any] = {"fits": args.fits, "steps": args.steps, "rows_per_fit": 6, "batch_size": 2}
    # Ray as a job starts it (`ensure_ray`: quiet, offline, its controller's poll interval), private to
    # this run, and timed apart: a job joins a cluster started once with `ray start --head` instead.
    out["ray_init_s"] = round(ensure_ray(LOCAL_RAY, num_cpus=2), 2)
    in_proc, one_worker = [], []
    try:
        for repeat in range(args.repeats):  # interleaved, so both sides see the same background load
            with Client(home=root / f"home-inprocess-{repeat}", tenant="bench") as client:
                in_proc.append(in_process(client, spec))
                print(f"in-process packed loop: {in_proc[-1]}", flush=True)
            with Client(home=root / f"home-1w-{repeat}", tenant="bench") as client:
                one_worker.append(ray_job(client, spec))
                print(f"packed Ray job, 1 worker: {one_worker[-1]}", flush=True)
        out["in_process"] = fastest(in_proc, "total_s")
        out["ray_1_worker"] = fastest(one_worker, "trainer_fit_s")
        with Client(home=root / "home-2w", tenant="bench") as client:
            out["ray_2_workers"] = ray_job(client, job_spec(model, data, args.steps, num_workers=2))
            print(f"packed Ray job, 2 workers: {out['ray_2_workers']}", flush=True)
        naive = []
        with Client(home=root / "home-naive", tenant="bench") as client:
            for user in range(args.naive_samples):
                one = write_jsonl(root / f"user-{user}.jsonl", review_rows(user, 6))
                naive.append(ray_job(client, job_spec(model, one, args.steps)))
                print(f"one Ray Train fit() for one fit: {naive[-1]}", flush=True)
        out["naive_per_fit"] = naive
    finally:
        ray.shutdown()
    per_fit = statistics.mean(n["trainer_fit_s"] for n in naive)
    packed = out["ray_1_worker"]["trainer_fit_s"]
    out["naive_extrapolated_s"] = round(per_fit * args.fits, 1)
    out["ratio_packed_vs_naive"] = round(per_fit * args.fits / packed, 1)
    out["ray_overhead_vs_in_process"] = round(packed / out["in_process"]["total_s"] - 1, 3)
    out["ray_fixed_overhead_s"] = round(packed - out["ray_1_worker"]["loop_s"], 2)
    out["loop_overhead_vs_in_process"] = round(
        out["ray_1_worker"]["loop_s"] / out["in_process"]["loop_s"] - 1, 3
    )
    out["loop_cpu_overhead_vs_in_process"] = round(
        out["ray_1_worker"]["loop_cpu_s"] / out["in_process"]["loop_cpu_s"] - 1, 3
    )
    out["speedup_2_vs_1_workers"] = round(packed / out["ray_2_workers"]["trainer_fit_s"], 2)
    out["loop_speedup_2_vs_1_workers"] = round(
        out["ray_1_worker"]["loop_s"] / out["ray_2_workers"]["loop_s"], 2
    )
    return out


def smollm_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """K fits packed (rows of every fit in shared forwards) vs the same fits trained one after another."""
    import ulpt
    from ulpt.training import FitRequest, PackedTrainer, TrainConfig
    from ulpt.training.api import prepare_fit

    model = ulpt.load_base_model("smollm2-135m")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = TrainConfig(steps=args.smollm_steps, batch_size=args.smollm_batch, lr=0.01)
    requests = [
        FitRequest(
            str(i),
            ulpt.AdapterSpec(n_tokens=10, rank=2, seed=i),
            [{"input": r["text"], "target": r["label"]} for r in review_rows(i, 8)],
            (),
            config,
        )
        for i in range(args.smollm_fits)
    ]
    fits = [prepare_fit(model, r) for r in requests]
    started = time.monotonic()
    PackedTrainer(model, max_rows_per_forward=64).run(fits)
    packed = time.monotonic() - started
    packed_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    subset = requests[: args.smollm_sequential]
    started = time.monotonic()
    for request in subset:
        PackedTrainer(model, max_rows_per_forward=64).run([prepare_fit(model, request)])
    sequential = (time.monotonic() - started) * len(requests) / len(subset)
    return {
        "model": "smollm2-135m",
        "fits": len(requests),
        "steps": args.smollm_steps,
        "batch_size": args.smollm_batch,
        "rows_per_forward": 64,
        "torch_threads": torch.get_num_threads(),
        "packed_s": round(packed, 1),
        "sequential_s": round(sequential, 1),
        "sequential_measured_fits": len(subset),
        "packed_fits_per_hour": round(len(requests) / packed * 3600),
        "sequential_fits_per_hour": round(len(requests) / sequential * 3600),
        "ratio_packed_vs_sequential": round(sequential / packed, 2),
        "rss_base_mb": round(base_rss),
        "rss_peak_packed_mb": round(packed_rss),
    }


def overhead_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """What stepping F fits costs beyond the rows themselves: F fits of 1 row vs 1 fit of F rows per step.

    Each of the F fits has one row and the single fit has all F of them, so every step both sides
    run the very same rows through the same packed forward and backward passes (interleaved step by
    step in one run): the difference is the per-fit cost (optimizer, clipping, schedules, prompts,
    packing) and nothing else. Near zero, the difference is within the step-to-step noise of a
    shared machine (every step's CPU time is kept in the results).
    """
    import ulpt
    from ulpt.models.tiny import build_tiny_model
    from ulpt.training import FitRequest, PackedTrainer, TrainConfig
    from ulpt.training.api import prepare_fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = ulpt.load_base_model(build_tiny_model(root / "tiny-overhead", "llama"))
        fits_n, steps = args.overhead_fits, args.overhead_steps
        spec = {"n_tokens": 4, "rank": 2}
        config = {"steps": 10 * (steps + 1), "lr": 0.01, "eval_every": 10_000}

        def rows(user: int, n: int) -> list[dict[str, Any]]:
            return [{"input": r["text"], "target": r["label"]} for r in review_rows(user, n)]

        many = [
            prepare_fit(
                model,
                FitRequest(
                    str(i),
                    ulpt.AdapterSpec(**spec, seed=i),
                    rows(i, 1),
                    (),
                    TrainConfig(batch_size=1, **config),
                ),
            )
            for i in range(fits_n)
        ]
        pooled = [row for i in range(fits_n) for row in rows(i, 1)]  # every step: the same rows as `many`
        one = [
            prepare_fit(
                model,
                FitRequest(
                    "one",
                    ulpt.AdapterSpec(**spec, seed=0),
                    pooled,
                    (),
                    TrainConfig(batch_size=fits_n, **config),
                ),
            )
        ]
        trainer = PackedTrainer(model, max_rows_per_forward=64)
        # CPU seconds of this process (what contention on a shared machine distorts least) and wall
        cpu: dict[str, list[float]] = {"many": [], "one": []}
        wall: dict[str, list[float]] = {"many": [], "one": []}
        for step in range(steps + 1):  # the first step of each side warms up (shapes, stacking)
            sides = [("many", many), ("one", one)]
            for side, fits in sides if step % 2 else sides[::-1]:
                started, started_cpu = time.perf_counter(), time.process_time()
                trainer.train_step(fits)
                if step:
                    cpu[side].append(time.process_time() - started_cpu)
                    wall[side].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    # the least disturbed step of each side, as `fastest`: on a shared machine noise only adds time
    many_s, one_s = min(cpu["many"]), min(cpu["one"])
    many_wall, one_wall = min(wall["many"]), min(wall["one"])
    return {
        "model": "tiny llama (random)",
        "fits": fits_n,
        "rows_per_step": fits_n,
        "measured_steps": steps,
        "torch_threads": 1,
        "many_fits_step_cpu_s": round(many_s, 4),
        "one_fit_step_cpu_s": round(one_s, 4),
        "overhead_us_per_fit_step": round((many_s - one_s) / fits_n * 1e6, 1),
        "ratio_many_vs_one": round(many_s / one_s, 3),
        "many_fits_step_wall_s": round(many_wall, 4),
        "one_fit_step_wall_s": round(one_wall, 4),
        "overhead_us_per_fit_step_wall": round((many_wall - one_wall) / fits_n * 1e6, 1),
        "ratio_many_vs_one_wall": round(many_wall / one_wall, 3),
        "all_cpu_s": cpu,
        "load_average": round(os.getloadavg()[0], 1),
    }


FIXED_PARTS = ("workers_start_s", "worker_setup_s", "trainer_stop_s")
"""Where a Ray job's fixed time goes, from the job's timings (see ulpt_jobs.driver._fixed_costs)."""


def table(results: dict[str, Any]) -> str:
    tiny, smol, over = results.get("tiny", {}), results.get("smollm", {}), results.get("overhead", {})
    rows: list[tuple[str, str]] = []
    if over:
        n = over["fits"]
        rows += [
            (f"(e) one step, CPU: {n:,} fits x 1 row / 1 fit x {n:,} rows",
             f"{over['many_fits_step_cpu_s'] * 1e3:.0f} / {over['one_fit_step_cpu_s'] * 1e3:.0f} ms"),
            (f"(e) per-fit cost of a step at {n:,} fits beyond its rows, CPU / wall",
             f"{over['overhead_us_per_fit_step']:.1f} / {over['overhead_us_per_fit_step_wall']:.1f} us"),
            (f"(e) {n:,} fits x 1 row vs 1 fit x {n:,} rows, CPU / wall",
             f"{over['ratio_many_vs_one']:.3f}x / {over['ratio_many_vs_one_wall']:.3f}x"),
        ]  # fmt: skip
    if tiny:
        n, ip, w1, w2 = tiny["fits"], tiny["in_process"], tiny["ray_1_worker"], tiny["ray_2_workers"]
        naive = statistics.mean(x["trainer_fit_s"] for x in tiny["naive_per_fit"])
        rows += [
            (f"(a) {n:,} fits x {tiny['steps']} steps: one packed Ray job", f"{w1['trainer_fit_s']:.1f} s"),
            ("(a) naive: one Ray Train fit() per fit (mean)", f"{naive:.1f} s per fit"),
            (f"(a) naive extrapolated to {n:,} fits", f"{tiny['naive_extrapolated_s']:.0f} s"),
            ("(a) packed job vs naive", f"{tiny['ratio_packed_vs_naive']:.0f}x"),
            ("(c) same loop in-process, 1 thread: setup + loop",
             f"{ip['setup_s']:.1f} + {ip['loop_s']:.1f} s"),
            ("(c) Ray job fixed start-up (fit() minus loop)", f"{tiny['ray_fixed_overhead_s']:.1f} s"),
            ("(c) of it: workers start / worker setup / trainer stop",
             " / ".join(f"{w1.get(k) or 0:.1f}" for k in FIXED_PARTS) + " s"),
            ("(c) Ray start (once per cluster; a job on `ray start --head` skips it)",
             f"{tiny['ray_init_s']:.1f} s"),
            ("(c) Ray job vs in-process: total", f"{tiny['ray_overhead_vs_in_process']:+.0%}"),
            ("(c) Ray job vs in-process: training loop only, wall / CPU",
             f"{tiny['loop_overhead_vs_in_process']:+.0%} / {tiny['loop_cpu_overhead_vs_in_process']:+.0%}"),
            ("(d) 2 workers: one packed Ray job", f"{w2['trainer_fit_s']:.1f} s"),
            ("(d) speed-up 2 vs 1 workers: fit() / loop only",
             f"{tiny['speedup_2_vs_1_workers']:.2f}x / {tiny['loop_speedup_2_vs_1_workers']:.2f}x"),
            ("(d) loop CPU seconds, 1 worker / 2 workers (sum)",
             f"{w1['loop_cpu_s']:.0f} / {w2['loop_cpu_s']:.0f} s"),
            ("load average during 1-worker / 2-worker jobs", f"{w1['load_average']} / {w2['load_average']}"),
            ("peak RSS of a tiny-model worker", f"{w1['worker_peak_rss_mb']:.0f} MB"),
        ]  # fmt: skip
    if smol:
        rows += [
            (f"(b) SmolLM2 {smol['fits']} fits x {smol['steps']} steps: packed", f"{smol['packed_s']:.0f} s"),
            (f"(b) one after another (measured {smol['sequential_measured_fits']}, scaled)",
             f"{smol['sequential_s']:.0f} s"),
            ("(b) fits/hour packed vs one after another",
             f"{smol['packed_fits_per_hour']:,} vs {smol['sequential_fits_per_hour']:,} "
             f"= {smol['ratio_packed_vs_sequential']:.2f}x"),
            ("(b) RSS: base loaded / peak while packed",
             f"{smol['rss_base_mb']} / {smol['rss_peak_packed_mb']} MB"),
        ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--naive-samples", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="in-process and 1-worker runs (fastest kept)")
    parser.add_argument("--smollm-fits", type=int, default=64)
    parser.add_argument("--smollm-steps", type=int, default=2)
    parser.add_argument("--smollm-batch", type=int, default=2)
    parser.add_argument("--smollm-sequential", type=int, default=16, help="fits measured sequentially")
    parser.add_argument("--overhead-fits", type=int, default=1000)
    parser.add_argument("--overhead-steps", type=int, default=10, help="measured steps (after one warm-up)")
    parser.add_argument("--skip", choices=["overhead", "tiny", "smollm"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {
        "benchmark": "training",
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="ulpt-bench-") as tmp:
        for section, run in (
            ("overhead", lambda: overhead_benchmark(args, Path(tmp))),
            ("smollm", lambda: smollm_benchmark(args)),
            ("tiny", lambda: tiny_benchmarks(args, Path(tmp))),
        ):
            if section in args.skip:  # keep the last run's section: each section's ratios come from one run
                if section in previous:
                    results[section] = previous[section]
                continue
            results[section] = {"when": datetime.now().isoformat(timespec="seconds"), **run()}
            print(f"{section}: {results[section]}", flush=True)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
