"""Node memory and start time with the base model shared through Ray's object store vs a copy per process.

    python benchmarks/memory.py                  # SmolLM2-135M in fp32, 1/2/4 workers, 1/2 replicas
    python benchmarks/memory.py --dtype bfloat16 # converted from the fp32 files (as on a GPU)
    python benchmarks/memory.py --model tiny     # a tiny random model, seconds per case

Training: N processes on one node each take the base model exactly as a job's Ray Train worker does
(`ulpt_jobs.worker.base_model`: the driver's shared reference, or the disk), touch every weight with
one forward pass (a disk load maps its files lazily), then run one packed training step of 8 fits.
The model's bytes on the node are what the loads added to the workers' proportional set sizes (PSS),
plus what the put added to the driver's: a page shared by k processes counts 1/k in each, so a shared
copy counts once and private copies N times. Serving: an application with N replicas
(`ServeConfig.share_weights` on or off) answers one request; its memory is the PSS of the replicas
and of the weights' owner actor (runtime included: a replica's PSS before loading is not observable).
"added per process" is (memory(N) - memory(1)) / (N - 1) as a fraction of the weights' bytes.
Times: `load_s` is the model load inside a process (object store vs disk, the page cache warm in both;
the disk load then finishes mapping at the first forward, `first_forward_s`), `ready_s` the time from
asking Ray for the processes to all of them holding the model / the first answer.

Writes benchmarks/results/memory.json and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
import torch

import ulpt
from ulpt.models.shared import put_base_model
from ulpt.models.tiny import build_tiny_model
from ulpt.training import FitRequest, PackedTrainer, TrainConfig
from ulpt.training.api import prepare_fit
from ulpt_jobs.worker import base_model
from ulpt_serving.app import build_application
from ulpt_serving.config import ServeConfig
from ulpt_serving.weights import NAMESPACE, owner_name

HERE = Path(__file__).resolve().parent
ROWS = [
    {"input": f"Review {i}: the room was {'clean' if i % 2 else 'dirty'}.", "target": " yes"}
    for i in range(8)
]


@ray.remote(num_cpus=0)
class TrainingWorker:
    """What a Ray Train worker does before its first step: take the base model, prepare fits, step."""

    def load(self, model: str, dtype: str, shared: list[Any]) -> dict[str, Any]:
        """Take the base model as a job's worker does and touch every weight once (a forward pass:
        a disk load maps its files lazily). Returns this process's PSS before the load as well."""
        torch.set_num_threads(1)
        before = psutil.Process().memory_full_info().pss
        spec = ulpt.JobSpec.from_dict(
            {"base_model": model, "dtype": dtype, "dataset": {"path": "unused.jsonl"}}
        )
        started = time.perf_counter()
        self.base = base_model(spec, torch.device("cpu"), shared[0])
        loaded = time.perf_counter()
        with torch.no_grad():
            self.base.hf(input_ids=torch.tensor([self.base.encode("The room was clean.")]))
        return {
            "pid": os.getpid(),
            "shared": self.base.shared_weights,
            "pss_before_load": before,
            "load_s": loaded - started,
            "first_forward_s": time.perf_counter() - loaded,
        }

    def step(self) -> float:
        config = TrainConfig(steps=1, batch_size=4)
        fits = [
            prepare_fit(self.base, FitRequest(f"f{i}", ulpt.AdapterSpec(seed=i), ROWS, (), config))
            for i in range(8)
        ]
        started = time.perf_counter()
        PackedTrainer(self.base).train_step(fits)
        return time.perf_counter() - started


def pss(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_full_info().pss for pid in pids)


def ray_children(marker: str) -> list[int]:
    node: Any = ray._private.worker._global_node  # no state API without the dashboard
    raylet = node.all_processes["raylet"][0].process.pid
    return [p.pid for p in psutil.Process(raylet).children(recursive=True) if marker in " ".join(p.cmdline())]


def training_case(model: str, dtype: str, workers: int, shared: bool) -> dict[str, Any]:
    """Model memory on the node: what loading added to the workers' PSS, plus what the put added to
    the driver's (the object it wrote). Private copies count N times, a shared one once."""
    driver_before = pss([os.getpid()])
    started = time.perf_counter()
    ref = put_base_model(model, dtype) if shared else None
    put_s = time.perf_counter() - started
    actors = [TrainingWorker.remote() for _ in range(workers)]  # type: ignore[attr-defined]
    reports = ray.get([a.load.remote(model, dtype, [ref]) for a in actors])
    ready_s = time.perf_counter() - started
    assert all(r["shared"] == shared for r in reports), reports
    pids = [r["pid"] for r in reports]
    model_bytes = pss(pids) - sum(r["pss_before_load"] for r in reports) + pss([os.getpid()]) - driver_before
    step_s = max(ray.get([a.step.remote() for a in actors]))
    after_step = pss([*pids, os.getpid()])
    for actor in actors:
        ray.kill(actor)
    del ref
    return {
        "processes": workers,
        "model_bytes_on_node": model_bytes,
        "node_pss_after_first_step": after_step,
        "load_s": max(r["load_s"] for r in reports),
        "first_forward_s": max(r["first_forward_s"] for r in reports),
        "ready_s": ready_s,
        "first_step_s": step_s,
        "put_s": put_s,
    }


def serving_case(
    model: str, dtype: str, replicas: int, shared: bool, home: Path, port: int
) -> dict[str, Any]:
    from ray import serve

    name = f"mem{replicas}{'s' if shared else 'p'}"
    config = ServeConfig(
        model=model, home=str(home), auth=False, num_replicas=replicas, num_cpus=0, torch_threads=1,
        share_weights=shared, dtype=dtype, app_name=name, route_prefix=f"/{name}",
    )  # fmt: skip
    started = time.perf_counter()
    serve.run(build_application(config), name=name, route_prefix=f"/{name}")
    body = {"model": config.base_model_name, "prompt": "The room was", "max_tokens": 4}
    answer = httpx.post(f"http://127.0.0.1:{port}/{name}/v1/completions", json=body, timeout=300)
    ready_s = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    pids = ray_children(f"ServeReplica:{name}:") + ray_children("WeightsOwner")
    memory = pss(pids)
    serve.delete(name)
    if shared:  # the next case puts its own weights
        ray.kill(ray.get_actor(owner_name(model, dtype), namespace=NAMESPACE))
    return {"processes": replicas, "node_pss_bytes": memory, "ready_s": ready_s}


def summarize(cases: list[dict[str, Any]], key: str, weight_bytes: int) -> None:
    one = cases[0][key]
    for case in cases[1:]:
        added = (case[key] - one) / (case["processes"] - 1)
        case["added_per_process_of_weights"] = round(added / weight_bytes, 3)


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['model']} {results['dtype']}, weights {results['weight_bytes'] / 1e9:.2f} GB. "
        "Training: the model's bytes on the node (loads' PSS); serving: the replicas' whole PSS.",
        "| what | processes | weights | GB | added per process | load s | ready s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for kind, key in (("training", "model_bytes_on_node"), ("serving", "node_pss_bytes")):
        for mode in ("private", "shared"):
            for case in results[kind][mode]:
                added = case.get("added_per_process_of_weights")
                load = f"{case['load_s']:.2f}" if "load_s" in case else "-"
                lines.append(
                    f"| {kind} | {case['processes']} | {mode} | {case[key] / 1e9:.2f} "
                    f"| {f'{100 * added:.0f}% of weights' if added is not None else '-'} "
                    f"| {load} | {case['ready_s']:.1f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="a model name or folder, or 'tiny'")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", type=Path, default=None, help="default: results/memory[-DTYPE].json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ulpt-memory-"))
    model = str(build_tiny_model(tmp / "tiny", "llama")) if args.model == "tiny" else args.model
    model = str(ulpt.models.registry.resolve_model_path(model))  # materialized once, before timing
    itemsize = getattr(torch, args.dtype).itemsize
    weight_bytes = sum(p.numel() * itemsize for p in ulpt.load_base_model(model).hf.parameters())
    out = args.out or HERE / "results" / (
        "memory.json" if args.dtype == "float32" else f"memory-{args.dtype}.json"
    )
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(dir="/tmp"))
    from ray import serve

    port = 18000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "weight_bytes": weight_bytes,
        "training": {},
        "serving": {},
    }
    try:
        for mode in ("private", "shared"):
            results["training"][mode] = [
                training_case(model, args.dtype, n, mode == "shared") for n in (1, 2, 4)
            ]
            summarize(results["training"][mode], "model_bytes_on_node", weight_bytes)
            print(f"training {mode}: {results['training'][mode]}", flush=True)
        for mode in ("private", "shared"):
            cases = [serving_case(model, args.dtype, n, mode == "shared", tmp / "home", port) for n in (1, 2)]
            results["serving"][mode] = cases
            summarize(cases, "node_pss_bytes", weight_bytes)
            print(f"serving {mode}: {cases}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
