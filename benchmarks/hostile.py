"""Hostile-tenant benchmark: does another tenant keep its latency while one tenant holds every slot it can?

    PYTHONPATH=platform:jobs:serving:control .venv/bin/python benchmarks/hostile.py            # 200 probes
    PYTHONPATH=platform:jobs:serving:control .venv/bin/python benchmarks/hostile.py --quick    # 40 probes

One Ray Serve on this machine runs the inference app (tiny llama, ulpt's engine, one replica) at `/`
and the control plane (one replica) at `/control`, with the default per-tenant limits
(`ulpt_serving.limits.TenantLimits`: 16 requests and 4 streams per tenant and replica, bodies on a
10 s idle / 60 s clock). The victim tenant measures, one request at a time, the latency of
`GET /control/v1/jobs` and of a 4-token completion: first idle, then while the attacker tenant holds
20 uploads sending a row every 0.5 s to the control plane and 50 concurrent 128-token completions
(each re-sent as soon as it ends, or after its 429's Retry-After). Goal: the victim's p99 at most 2x
idle. Not a CI test (timings): prints a table and writes benchmarks/results/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

import ulpt
from ulpt.models.tiny import build_tiny_model
from ulpt.sdk import Client

RESULTS = Path(__file__).resolve().parent / "results" / "hostile.json"
ROW = b'{"input": "the room was clean", "target": "yes"}\n'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


async def _probe(client: httpx.AsyncClient, key: str, probes: int) -> dict[str, dict[str, float]]:
    """The victim's latencies, one request at a time: the jobs list, then 4-token completions."""
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "victim-adapter", "prompt": "hello there", "max_tokens": 4, "temperature": 0}
    out = {}
    for name, call in (
        ("control_jobs", lambda: client.get("/control/v1/jobs", headers=auth)),
        ("completion_4_tokens", lambda: client.post("/v1/completions", json=body, headers=auth)),
    ):
        latencies = []
        for _ in range(probes):
            started = time.perf_counter()
            answer = await call()
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise SystemExit(f"the victim's {name} answered {answer.status_code}: {answer.text[:200]}")
        out[name] = _percentiles(latencies)
    return out


async def _slow_upload(
    client: httpx.AsyncClient, key: str, stop: asyncio.Event, statuses: Counter[int]
) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        while not stop.is_set():
            yield ROW
            await asyncio.sleep(0.5)

    while not stop.is_set():
        try:
            answer = await client.post(
                "/control/v1/files", content=trickle(), headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError:
            statuses[0] += 1
            continue
        statuses[answer.status_code] += 1
        if answer.status_code == 429:
            await asyncio.sleep(float(answer.headers.get("retry-after", "1")))


async def _long_completions(
    client: httpx.AsyncClient, key: str, stop: asyncio.Event, statuses: Counter[int]
) -> None:
    body = {"model": "attacker-adapter", "prompt": "go", "max_tokens": 128, "ignore_eos": True}
    while not stop.is_set():
        answer = await client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        statuses[answer.status_code] += 1
        if answer.status_code == 429:
            await asyncio.sleep(float(answer.headers.get("retry-after", "1")))


async def _run(url: str, keys: dict[str, str], probes: int, uploads: int, completions: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=uploads + completions + 8)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await _probe(client, keys["victim"], 5)  # warm-up: adapters loaded, connections open
        idle = await _probe(client, keys["victim"], probes)
        stop = asyncio.Event()
        upload_status: Counter[int] = Counter()
        completion_status: Counter[int] = Counter()
        attack = [
            asyncio.create_task(_slow_upload(client, keys["attacker"], stop, upload_status))
            for _ in range(uploads)
        ]
        attack += [
            asyncio.create_task(_long_completions(client, keys["attacker"], stop, completion_status))
            for _ in range(completions)
        ]
        await asyncio.sleep(3.0)  # the attack settles: every slot it can get is held
        during = await _probe(client, keys["victim"], probes)
        stop.set()
        await asyncio.gather(*attack, return_exceptions=True)
    ratios = {name: round(during[name]["p99_ms"] / idle[name]["p99_ms"], 2) for name in idle}
    return {
        "idle": idle,
        "attack": during,
        "p99_ratio": ratios,
        "attacker_upload_statuses": dict(upload_status),
        "attacker_completion_statuses": dict(completion_status),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=200, help="victim requests per kind and phase")
    parser.add_argument("--uploads", type=int, default=20, help="the attacker's slow uploads")
    parser.add_argument("--completions", type=int, default=50, help="the attacker's concurrent completions")
    parser.add_argument("--quick", action="store_true", help="40 probes")
    args = parser.parse_args(argv)
    probes = 40 if args.quick else args.probes

    from ray import serve

    from ulpt.config import ensure_ray
    from ulpt_control import ControlConfig
    from ulpt_control.deployment import build_application as build_control
    from ulpt_serving.app import build_application as build_inference
    from ulpt_serving.config import ServeConfig

    root = Path(tempfile.mkdtemp(prefix="ulpt-hostile-"))
    model_dir = build_tiny_model(root / "llama", "llama")
    home = root / "home"
    keys = {}
    for tenant in ("victim", "attacker"):
        with Client(home=home, tenant=tenant) as client:
            adapter = ulpt.Adapter.create(
                ulpt.AdapterSpec(method="ulpt", n_tokens=4, rank=2, seed=1), hidden_size=64
            )
            client.adapters.register(adapter, name=f"{tenant}-adapter", base_model="tiny")
            keys[tenant] = client.keys.create("bench").key
    port = _free_port()
    inference = ServeConfig(
        model=str(model_dir), served_model_name="tiny", home=str(home), num_cpus=0, torch_threads=1,
        engine="native", log_requests=False,
    )  # fmt: skip
    control = ControlConfig(home=str(home), base_models=(str(model_dir),))
    ensure_ray(num_cpus=os.cpu_count())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many(
        [
            serve.RunTarget(build_inference(inference), name="ulpt", route_prefix="/"),
            serve.RunTarget(build_control(control), name="control", route_prefix="/control"),
        ]
    )
    try:
        result = asyncio.run(_run(f"http://127.0.0.1:{port}", keys, probes, args.uploads, args.completions))
    finally:
        serve.shutdown()
    result.update(
        probes=probes,
        slow_uploads=args.uploads,
        concurrent_completions=args.completions,
        limits=control.limits.to_dict(),
        machine=f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    )
    columns = ("idle p50", "idle p99", "attack p50", "attack p99")
    print(f"{'victim request':<22} " + " ".join(f"{c:>11}" for c in columns) + f" {'p99 x':>6}")
    for name in result["idle"]:
        idle, attack = result["idle"][name], result["attack"][name]
        print(
            f"{name:<22} {idle['p50_ms']:>9.1f}ms {idle['p99_ms']:>9.1f}ms {attack['p50_ms']:>9.1f}ms "
            f"{attack['p99_ms']:>9.1f}ms {result['p99_ratio'][name]:>6.2f}"
        )
    print(f"attacker uploads: {result['attacker_upload_statuses']}")
    print(f"attacker completions: {result['attacker_completion_statuses']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(RESULTS.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
