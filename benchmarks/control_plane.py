"""Control-plane benchmark: plan a big job, then claim -> register -> mark done in many workers, no training.

    PYTHONPATH=platform:jobs:serving .venv/bin/python benchmarks/control_plane.py            # 100,000 fits
    PYTHONPATH=platform:jobs:serving .venv/bin/python benchmarks/control_plane.py --quick    # 10,000 fits

What a packed GPU worker asks of the catalog and the store, measured alone, so the figure says whether
the control plane could ever hold the GPUs back. Training is left out on purpose: each "fit" ends the
moment it is claimed, so every second here is catalog or store work (or the Python around it).

1. plan: the driver's own `create_job` on a JSONL file of N users (one fit each): the data read and
   split, each fit's rows written to the store, the job and its N fit rows recorded. Its peak memory
   (growth of the process's peak RSS) is printed per fit: the plan holds every fit's rows at once.
2. W worker processes (default 16) against one real PostgreSQL (fsync on, 127.0.0.1, started as
   tests/services.py does) and a local store. Each loops: claim up to `--batch` pending fits
   (`claim_fits`), build each fit's real, untrained adapter from its recorded spec (seed, rank, tokens of
   the tiny model), register them in one `register_many` (blobs, then one transaction), mark them done
   in one transaction (`mark_fits_done`). Processes, not threads: Ray workers are processes, each with
   its own interpreter and connection, and threads would share one GIL and measure Python, not the
   catalog.

Reported: fits/s end to end (every fit done / wall time of the worker phase), and for each stage the
rate the workers sustained while in it (fits / (stage seconds summed over workers / workers)), plus the
p50/p99 latency of one claim. Prints a table and writes benchmarks/results/control_plane.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO / "jobs"), str(REPO)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ulpt.adapters import Adapter, AdapterSpec  # noqa: E402
from ulpt.catalog.db import open_catalog  # noqa: E402
from ulpt.catalog.jobs import FitOutcome, claim_fits, fit_counts, mark_fits_done  # noqa: E402
from ulpt.catalog.migrate import upgrade  # noqa: E402
from ulpt.jobspec import JobSpec  # noqa: E402
from ulpt.registry import Registration, Registry  # noqa: E402
from ulpt.store import open_store  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "control_plane.json"
TENANT = "bench"
GOAL_FITS_PER_S = 1000
console = Console()


def write_users(path: Path, users: int, rows_per_user: int) -> Path:
    rng = random.Random(0)
    with path.open("w") as out:
        for user in range(users):
            for _ in range(rows_per_user):
                label = rng.choice(("positive", "negative"))
                out.write(
                    json.dumps({"user_id": user, "text": f"review {rng.random():.6f} A:", "label": label})
                )
                out.write("\n")
    return path


def job_spec(model: Path, data: Path) -> JobSpec:
    return JobSpec.from_dict(
        {
            "base_model": str(model),
            "dataset": {"path": str(data), "input": "text", "target": "label", "group_by": "user_id"},
            "adapter": {"method": "ulpt", "n_tokens": 4, "rank": 2, "seed": 1, "seed_policy": "per_fit"},
            "train": {"steps": 50, "lr": 0.05, "batch_size": 2},
            "name": "user-{user_id}",
            "tags": {"cohort": "c{user_id}"},
        }
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def plan_job(url: str, store_url: str, home: Path, spec: JobSpec) -> tuple[str, dict[str, Any]]:
    """The driver's `create_job`, timed, in a fresh process: its peak RSS growth is the plan's memory."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_plan_in_child, args=(url, store_url, home, spec, queue))
    proc.start()
    job_id, figures = queue.get(timeout=3600)
    proc.join()
    return job_id, figures


def _plan_in_child(url: str, store_url: str, home: Path, spec: JobSpec, out: Any) -> None:
    from ulpt_jobs.driver import JobTarget, create_job

    catalog = open_catalog(url)
    target = JobTarget(catalog=catalog, catalog_url=url, store_url=store_url, home=home)
    rss_before = current_rss_mb()
    began = time.perf_counter()
    job_id, plan = create_job(target, spec, TENANT)
    seconds = time.perf_counter() - began
    grown = max(0.0, peak_rss_mb() - rss_before)
    fits = len(plan.fits)
    catalog.close()
    out.put(
        (
            job_id,
            {
                "fits": fits,
                "seconds": round(seconds, 2),
                "fits_per_s": round(fits / seconds, 1),
                "peak_rss_growth_mb": round(grown, 1),
                "bytes_per_fit": round(grown * 2**20 / fits),
            },
        )
    )


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(
    url: str, store_url: str, job_id: str, hidden: int, base_model: str, batch: int, index: int, out: Any
) -> None:
    """One worker's loop: claim, register the fits' untrained adapters, mark them done; stage times out."""
    catalog = open_catalog(url)
    registry = Registry(catalog, open_store(store_url))
    name = f"bench:{os.getpid()}:rank{index}"
    times = {"claim": 0.0, "adapters": 0.0, "register": 0.0, "mark_done": 0.0}
    latencies: list[float] = []
    fits = 0
    job = uuid.UUID(job_id)
    while True:
        began = time.perf_counter()
        with catalog.session() as session:
            rows = claim_fits(session, job_id, batch, name)
        claimed = time.perf_counter()
        latencies.append(claimed - began)
        times["claim"] += claimed - began
        if not rows:
            break
        items = []
        for row in rows:
            record = row.spec or {}
            adapter = Adapter.create(AdapterSpec.from_dict(record["adapter"]), hidden, base_model=base_model)
            items.append(
                Registration(
                    adapter,
                    name=record["name"],
                    tags=record.get("tags") or {},
                    metrics={"eval_loss": 1.0},
                    dataset_fingerprint=record.get("dataset_fingerprint"),
                    training_config={"fit_key": row.key, **record["train"]},
                    job_id=job,
                )
            )
        built = time.perf_counter()
        records = registry.register_many(items, tenant=TENANT)
        registered = time.perf_counter()
        with catalog.session() as session:
            mark_fits_done(
                session,
                [
                    FitOutcome(
                        row.id, adapter_id=record.id, metrics={"eval_loss": 1.0}, timings={"worker": name}
                    )
                    for row, record in zip(rows, records, strict=True)
                ],
            )
        done = time.perf_counter()
        times["adapters"] += built - claimed
        times["register"] += registered - built
        times["mark_done"] += done - registered
        fits += len(rows)
    catalog.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put(
        {"fits": fits, "times": times, "claim_latencies": latencies, "cpu_s": usage.ru_utime + usage.ru_stime}
    )


def run_workers(
    url: str, store_url: str, job_id: str, hidden: int, base_model: str, workers: int, batch: int
) -> tuple[float, list[dict[str, Any]]]:
    ctx = multiprocessing.get_context("fork")  # children inherit the imports; no connection is open now
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, store_url, job_id, hidden, base_model, batch, i, queue))
        for i in range(workers)
    ]
    began = time.perf_counter()
    for proc in procs:
        proc.start()
    reports = [queue.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a worker process failed with exit code {proc.exitcode}")
    return wall, reports


def server_cpu_s(root: Path) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster's own and its exited backends'."""
    pid = (root / "data" / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])  # stat fields 14-17
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def summarize(
    wall: float, reports: Sequence[dict[str, Any]], workers: int, server_cpu: float
) -> dict[str, Any]:
    fits = sum(r["fits"] for r in reports)
    worker_cpu = sum(r["cpu_s"] for r in reports)
    per_fit = (worker_cpu + server_cpu) / fits
    stages = {}
    for stage in ("claim", "adapters", "register", "mark_done"):
        busy = sum(r["times"][stage] for r in reports) / workers  # seconds per worker in this stage
        stages[stage] = {
            "seconds_per_worker": round(busy, 2),
            "fits_per_s": round(fits / busy, 1) if busy else None,
        }
    latencies = sorted(x for r in reports for x in r["claim_latencies"])
    return {
        "fits": fits,
        "wall_s": round(wall, 2),
        "end_to_end_fits_per_s": round(fits / wall, 1),
        # What the work costs, whatever else runs on the machine: CPU per fit, and the rate one
        # otherwise idle core would sustain end to end (workers and PostgreSQL together).
        "cpu_ms_per_fit": {
            "workers": round(1000 * worker_cpu / fits, 3),
            "postgresql": round(1000 * server_cpu / fits, 3),
        },
        "fits_per_cpu_s": round(1 / per_fit, 1),
        "stages": stages,
        "claim_latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 2),
            "p99": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
            "claims": len(latencies),
        },
    }


def log(message: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {message}", markup=False, highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fits", type=int, default=100_000, help="fits in the job (one user each)")
    parser.add_argument("--quick", action="store_true", help="10,000 fits (a few minutes)")
    parser.add_argument("--workers", type=int, default=16, help="worker processes")
    parser.add_argument(
        "--batch", type=int, default=64, help="fits a worker claims, registers and marks at once"
    )
    parser.add_argument("--rows-per-fit", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    fits = 10_000 if args.quick and args.fits == parser.get_default("fits") else args.fits
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tests.services import running_postgres
    from ulpt.catalog.db import create_catalog_engine
    from ulpt.models.tiny import build_tiny_model

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ulpt-bench-") as tmp, running_postgres(durable=True) as server:
        root = Path(tmp)
        url = server.create_database("control_plane")
        engine = create_catalog_engine(url)
        upgrade(engine)
        engine.dispose()
        store_url = str(root / "store")
        model = build_tiny_model(root / "tiny", "llama")
        spec = job_spec(model, write_users(root / "users.jsonl", fits, args.rows_per_fit))
        log(f"planning a {fits:,}-fit job ...")
        job_id, plan = plan_job(url, store_url, root / "home", spec)
        log(f"plan: {plan}")
        from ulpt_jobs.plan import model_hidden_size

        hidden = model_hidden_size(str(model))
        log(f"{args.workers} workers: claim -> register -> mark done, {args.batch} fits at a time ...")
        server_before = server_cpu_s(server.root)
        wall, reports = run_workers(url, store_url, job_id, hidden, str(model), args.workers, args.batch)
        time.sleep(1)  # the workers' backends exit after their connections close
        server_cpu = server_cpu_s(server.root) - server_before
        catalog = open_catalog(url)
        with catalog.read() as session:
            counts = fit_counts(session, job_id)
        catalog.close()
    if counts["done"] != fits:
        raise SystemExit(f"only {counts['done']} of {fits} fits ended done: {counts}")
    results = {
        "benchmark": "control_plane",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        },
        "settings": {
            "fits": fits,
            "quick": args.quick,
            "workers": args.workers,
            "worker_kind": "processes",
            "batch": args.batch,
            "rows_per_fit": args.rows_per_fit,
            "catalog": "postgresql (fsync on, 127.0.0.1)",
            "store": "local folder",
            "training": "left out: a fit ends when claimed; its adapter is real but untrained",
        },
        "goal_end_to_end_fits_per_s": GOAL_FITS_PER_S,
        "plan": plan,
        **summarize(wall, reports, args.workers, server_cpu),
        "seconds": round(time.perf_counter() - began, 1),
    }
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")


def report(results: dict[str, Any]) -> None:
    settings = results["settings"]
    table = Table(
        title=f"ulpt control plane: {settings['fits']:,} fits, {settings['workers']} worker processes"
    )
    table.add_column("what")
    table.add_column("figure", justify="right")
    plan = results["plan"]
    table.add_row("plan (read, split, store rows, record fits)", f"{plan['fits_per_s']:,.0f} fits/s")
    table.add_row(
        "plan peak memory (RSS growth)",
        f"{plan['peak_rss_growth_mb']:,.0f} MB, {plan['bytes_per_fit']:,} B/fit",
    )
    for stage, data in results["stages"].items():
        table.add_row(f"stage: {stage}", f"{data['fits_per_s']:,.0f} fits/s")
    latency = results["claim_latency_ms"]
    table.add_row("claim latency p50 / p99", f"{latency['p50']:.1f} / {latency['p99']:.1f} ms")
    cpu = results["cpu_ms_per_fit"]
    table.add_row("CPU per fit: workers / PostgreSQL", f"{cpu['workers']:.2f} / {cpu['postgresql']:.2f} ms")
    table.add_row("fits per CPU-second (a core's worth, end to end)", f"{results['fits_per_cpu_s']:,.0f}")
    verdict = "meets" if results["end_to_end_fits_per_s"] >= GOAL_FITS_PER_S else "below"
    table.add_row(
        f"end to end (goal >= {GOAL_FITS_PER_S:,})",
        f"{results['end_to_end_fits_per_s']:,.0f} fits/s ({verdict})",
    )
    console.print(table)


if __name__ == "__main__":
    main()
