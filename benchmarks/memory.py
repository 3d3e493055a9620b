"""Node memory and start time with the base model shared through Ray's object store vs a copy per process.

    python benchmarks/memory.py                  # SmolLM2-135M in fp32, 1/2/4 workers, 1/2 replicas
    python benchmarks/memory.py --model tiny     # a tiny random model, seconds per case

Training: N processes on one node each take the base model exactly as a job's Ray Train worker does
(`ulpt_jobs.worker.base_model`: the driver's shared reference, or the disk) and run one packed training
step of 8 fits. Serving: an application with N replicas (`ServeConfig.share_weights` on or off) answers
one request. For every case the node's memory is the sum of the proportional set sizes (PSS) of the
processes that hold the model (workers or replicas, the driver that put the weights, the owner actor
of serving's shared weights): a page shared by k processes counts 1/k in each, so a shared copy counts
once. "added per process" is (memory(N) - memory(1)) / (N - 1) as a fraction of the weights' bytes.
Times: `load_s` is the model load inside a process (object store vs disk, the page cache warm in both),
`ready_s` the time from asking Ray for the process(es) to the first step / first answer.

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

    def first_step(self, model: str, shared: list[Any]) -> dict[str, Any]:
        torch.set_num_threads(1)
        spec = ulpt.JobSpec.from_dict({"base_model": model, "dataset": {"path": "unused.jsonl"}})
        started = time.perf_counter()
        base = base_model(spec, torch.device("cpu"), shared[0])
        loaded = time.perf_counter()
        config = TrainConfig(steps=1, batch_size=4)
        fits = [
            prepare_fit(base, FitRequest(f"f{i}", ulpt.AdapterSpec(seed=i), ROWS, (), config))
            for i in range(8)
        ]
        PackedTrainer(base).train_step(fits)
        return {
            "pid": os.getpid(),
            "shared": base.shared_weights,
            "load_s": loaded - started,
            "step_s": time.perf_counter() - loaded,
        }


def pss(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_full_info().pss for pid in pids)


def ray_children(marker: str) -> list[int]:
    node: Any = ray._private.worker._global_node  # no state API without the dashboard
    raylet = node.all_processes["raylet"][0].process.pid
    return [p.pid for p in psutil.Process(raylet).children(recursive=True) if marker in " ".join(p.cmdline())]


def training_case(model: str, workers: int, shared: bool) -> dict[str, Any]:
    started = time.perf_counter()
    ref = put_base_model(model, "float32") if shared else None
    put_s = time.perf_counter() - started
    actors = [TrainingWorker.remote() for _ in range(workers)]  # type: ignore[attr-defined]
    reports = ray.get([a.first_step.remote(model, [ref]) for a in actors])
    ready_s = time.perf_counter() - started
    assert all(r["shared"] == shared for r in reports), reports
    memory = pss([r["pid"] for r in reports] + [os.getpid()])
    for actor in actors:
        ray.kill(actor)
    del ref
    return {
        "processes": workers,
        "node_pss_bytes": memory,
        "load_s": max(r["load_s"] for r in reports),
        "ready_s": ready_s,
        "put_s": put_s,
    }


def serving_case(model: str, replicas: int, shared: bool, home: Path, port: int) -> dict[str, Any]:
    from ray import serve

    name = f"mem{replicas}{'s' if shared else 'p'}"
    config = ServeConfig(
        model=model, home=str(home), auth=False, num_replicas=replicas, num_cpus=0, torch_threads=1,
        share_weights=shared, app_name=name, route_prefix=f"/{name}",
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
        ray.kill(ray.get_actor(owner_name(model, "float32"), namespace=NAMESPACE))
    return {"processes": replicas, "node_pss_bytes": memory, "ready_s": ready_s}


def summarize(cases: list[dict[str, Any]], weight_bytes: int) -> None:
    one = cases[0]["node_pss_bytes"]
    for case in cases[1:]:
        added = (case["node_pss_bytes"] - one) / (case["processes"] - 1)
        case["added_per_process_of_weights"] = round(added / weight_bytes, 3)


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['model']} fp32, weights {results['weight_bytes'] / 1e9:.2f} GB",
        "| what | processes | weights | node PSS GB | added per process | load s | ready s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for kind in ("training", "serving"):
        for mode in ("private", "shared"):
            for case in results[kind][mode]:
                added = case.get("added_per_process_of_weights")
                lines.append(
                    f"| {kind} | {case['processes']} | {mode} | {case['node_pss_bytes'] / 1e9:.2f} "
                    f"| {f'{100 * added:.0f}% of weights' if added is not None else '-'} "
                    f"| {case.get('load_s', float('nan')):.2f} | {case['ready_s']:.1f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="a model name or folder, or 'tiny'")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ulpt-memory-"))
    model = str(build_tiny_model(tmp / "tiny", "llama")) if args.model == "tiny" else args.model
    model = str(ulpt.models.registry.resolve_model_path(model))  # materialized once, before timing
    weight_bytes = sum(p.numel() * 4 for p in ulpt.load_base_model(model).hf.parameters())
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(dir="/tmp"))
    from ray import serve

    port = 18000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict[str, Any] = {
        "model": args.model,
        "weight_bytes": weight_bytes,
        "training": {},
        "serving": {},
    }
    try:
        for mode in ("private", "shared"):
            results["training"][mode] = [training_case(model, n, mode == "shared") for n in (1, 2, 4)]
            summarize(results["training"][mode], weight_bytes)
            print(f"training {mode}: {results['training'][mode]}", flush=True)
        for mode in ("private", "shared"):
            cases = [serving_case(model, n, mode == "shared", tmp / "home", port) for n in (1, 2)]
            results["serving"][mode] = cases
            summarize(cases, weight_bytes)
            print(f"serving {mode}: {cases}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
