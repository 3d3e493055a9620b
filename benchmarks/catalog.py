"""Catalog benchmark: bulk registration rate and get/find latency on SQLite and PostgreSQL.

    python benchmarks/catalog.py                      # 100,000 adapters per backend, then 1M on PostgreSQL
    python benchmarks/catalog.py --n 20000 --pg-n 0   # a quick run

Every adapter is a real ULPT adapter (SmolLM2 shape: d=576, n=10, r=2, distinct seeds) serialized with
`Adapter.to_bytes()` before the clock starts, as training workers hand them over. Registration goes
through `Registry.register_many` (blobs into a local store with one syncfs per batch, then one catalog
transaction per batch). The PostgreSQL fill from `--n` to `--pg-n` reuses those blobs and inserts rows
with the catalog's bulk insert (`ulpt.catalog.adapters.insert_adapters`), i.e. the same SQL without the
store; it measures the database at 1M rows, not the store. PostgreSQL runs with fsync on.
Prints a table and writes benchmarks/results/catalog.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ulpt.adapters import Adapter, AdapterSpec  # noqa: E402
from ulpt.adapters.codec import blob_config  # noqa: E402
from ulpt.catalog import adapters as adapter_queries  # noqa: E402
from ulpt.catalog.base_models import ensure_base_model  # noqa: E402
from ulpt.catalog.db import create_catalog_engine, sqlite_url  # noqa: E402
from ulpt.catalog.migrate import upgrade  # noqa: E402
from ulpt.catalog.models import new_id, utcnow  # noqa: E402
from ulpt.catalog.tenants import ensure_tenant  # noqa: E402
from ulpt.registry import Registration  # noqa: E402
from ulpt.sdk import Client  # noqa: E402
from ulpt.store import blob_key, sha256_hex  # noqa: E402

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HIDDEN, N_TOKENS, RANK = 576, 10, 2
TENANTS = 10
TASKS = ("sst2", "mnli", "qnli", "rte", "boolq")
BATCH = 2000
console = Console()


def make_blobs(n: int) -> list[bytes]:
    """n distinct real ULPT adapters, serialized (not timed: training workers produce these)."""
    spec = dict(n_tokens=N_TOKENS, rank=RANK)
    return [
        Adapter.create(AdapterSpec(seed=seed, **spec), HIDDEN, base_model=BASE_MODEL).to_bytes()
        for seed in range(n)
    ]


def labels(i: int) -> tuple[str, dict[str, str], dict[str, float]]:
    rng = random.Random(i)
    k = i // TENANTS  # independent of the tenant, so each tenant has every task, team and cohort
    tags = {"task": TASKS[k % len(TASKS)], "team": f"team-{k % 20}", "cohort": f"c{k % 100}"}
    return f"tenant-{i % TENANTS}", tags, {"eval_accuracy": rng.random(), "eval_loss": rng.uniform(0.1, 3.0)}


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "mean_ms": 1000 * statistics.fmean(ordered),
        "samples": len(ordered),
    }


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    for _ in range(min(50, repeat)):  # warm caches and the connection pool
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def register(
    url: str, store_url: str, blobs: Sequence[bytes], start: int, writer: int = 0, writers: int = 1
) -> float:
    """register_many in batches of BATCH, for the tenants of this writer; returns adapters per second."""
    by_tenant: dict[str, list[Registration]] = {}
    for offset, blob in enumerate(blobs):
        i = start + offset
        tenant, tags, metrics = labels(i)
        if i % TENANTS % writers == writer:
            by_tenant.setdefault(tenant, []).append(
                Registration(blob, name=f"user-{i}", tags=tags, metrics=metrics)
            )
    clients = {t: Client(catalog_url=url, store_url=store_url, tenant=t) for t in by_tenant}
    for c in clients.values():
        c.adapters.find(limit=1)  # connect before the clock starts
    began = time.perf_counter()
    for tenant, items in by_tenant.items():
        for chunk in range(0, len(items), BATCH):
            clients[tenant].adapters.register_many(items[chunk : chunk + BATCH])
    elapsed = time.perf_counter() - began
    for c in clients.values():
        c.close()
    return sum(len(items) for items in by_tenant.values()) / elapsed


def register_parallel(url: str, store_url: str, blobs: Sequence[bytes], start: int, writers: int) -> float:
    """Aggregate rate of `writers` processes registering at once (each its own tenants), as Ray workers do."""
    ctx = multiprocessing.get_context("fork")  # children inherit the serialized blobs
    began = time.perf_counter()
    procs = [
        ctx.Process(target=register, args=(url, store_url, blobs, start, w, writers)) for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a writer process failed with exit code {proc.exitcode}")
    return len(blobs) / (time.perf_counter() - began)


def fill(client: Client, blobs: Sequence[bytes], start: int, stop: int) -> float:
    """Catalog rows start..stop-1 reusing the pool's (already stored) blobs; returns rows per second."""
    templates = []
    for blob in blobs[:2000]:
        config = blob_config(blob)
        sha = sha256_hex(blob)
        proj = config["projection"]
        templates.append(
            {
                "status": "ready",
                "method": config["method"],
                "base_model": BASE_MODEL,
                "hidden_size": HIDDEN,
                "n_tokens": N_TOKENS,
                "rank": RANK,
                "seed": config["seed"],
                "generator": proj["generator"],
                "generator_version": proj["generator_version"],
                "projection": proj["distribution"],
                "projection_fingerprint": proj["fingerprint"],
                "config": config,
                "blob_key": blob_key(sha),
                "blob_sha256": sha,
                "blob_size": len(blob),
                "num_trainable_params": config["num_trainable_params"],
                "dataset_fingerprint": None,
                "training_config": None,
                "job_id": None,
                "parent_id": None,
                "public": False,
                "deleted_at": None,
                "version": 1,
            }
        )
    began = time.perf_counter()
    for chunk in range(start, stop, 10 * BATCH):
        rows = []
        for i in range(chunk, min(stop, chunk + 10 * BATCH)):
            tenant, tags, metrics = labels(i)
            row = dict(templates[i % len(templates)], id=new_id(), tenant=tenant, name=f"user-{i}")
            rows.append(row | {"tags": tags, "metrics": metrics, "created_at": utcnow()})
        with client.catalog.session() as session:
            adapter_queries.insert_adapters(session, rows)
    return (stop - start) / (time.perf_counter() - began)


def measure(client: Client, size: int, repeat: int) -> dict[str, Any]:
    rng = random.Random(size)
    tenants = {
        f"tenant-{t}": Client(
            catalog_url=client.catalog_url, store_url=client.store_url, tenant=f"tenant-{t}"
        )
        for t in range(TENANTS)
    }
    for t, c in tenants.items():  # 100 aliases per tenant, for `get` by alias
        for a in range(100):
            i = a * TENANTS + int(t.split("-")[1])
            c.adapters.alias(f"prod-{a}", f"user-{i}:1")

    def pick() -> tuple[Client, int]:
        i = rng.randrange(size)
        return tenants[f"tenant-{i % TENANTS}"], i

    def get_name() -> None:
        c, i = pick()
        c.adapters.get(f"user-{i}")

    def get_version() -> None:
        c, i = pick()
        c.adapters.get(f"user-{i}:1")

    def get_alias() -> None:
        c = tenants[f"tenant-{rng.randrange(TENANTS)}"]
        c.adapters.get(f"prod-{rng.randrange(100)}")

    def find_typical() -> None:
        c = tenants[f"tenant-{rng.randrange(TENANTS)}"]
        page = c.adapters.find(tags={"task": rng.choice(TASKS)}, order_by="-metrics.eval_accuracy", limit=50)
        assert len(page) == 50

    def find_next_page() -> None:
        c = tenants[f"tenant-{rng.randrange(TENANTS)}"]
        team = {"team": f"team-{rng.randrange(20)}"}
        first = c.adapters.find(tags=team, limit=50)
        assert first.next_cursor is not None or size < 10_000
        c.adapters.find(tags=team, limit=50, cursor=first.next_cursor)

    results = {
        "get by name": timed(get_name, repeat),
        "get by name:version": timed(get_version, repeat),
        "get by alias": timed(get_alias, repeat),
        "find tenant+tag, best metric, 50": timed(find_typical, max(100, repeat // 4)),
        "find tenant+tag, newest, 2 pages": timed(find_next_page, max(100, repeat // 4)),
    }
    for c in tenants.values():
        c.close()
    return results


def log(message: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {message}", markup=False, highlight=False)


def run_backend(
    name: str, url: str, blobs: Sequence[bytes], work: Path, big: int, repeat: int, writers: int
) -> dict[str, Any]:
    engine = create_catalog_engine(url)
    upgrade(engine)
    engine.dispose()
    store = work / f"blobs-{name}"
    client = Client(catalog_url=url, store_url=str(store))
    with client.catalog.session() as session:  # tenants and base model exist before the clock starts
        for t in range(TENANTS):
            ensure_tenant(session, f"tenant-{t}")
        ensure_base_model(session, BASE_MODEL, HIDDEN, family="llama")
    half = len(blobs) // 2
    log(f"{name}: registering {half:,} adapters with register_many, one writer ...")
    out: dict[str, Any] = {"register_many_per_s": register(url, str(store), blobs[:half], 0), "sizes": {}}
    log(f"{name}: {out['register_many_per_s']:,.0f}/s; {len(blobs) - half:,} more with {writers} writers ...")
    out["register_many_parallel_per_s"] = register_parallel(url, str(store), blobs[half:], half, writers)
    out["writers"] = writers
    log(f"{name}: {out['register_many_parallel_per_s']:,.0f}/s; measuring at {len(blobs):,} ...")
    out["sizes"][len(blobs)] = measure(client, len(blobs), repeat)
    if big > len(blobs):
        log(f"{name}: filling to {big:,} rows with the catalog bulk insert ...")
        began = time.perf_counter()
        out["bulk_insert_rows_per_s"] = fill(client, blobs, len(blobs), big)
        if client.catalog.engine.dialect.name == "postgresql":
            from sqlalchemy import text

            with client.catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        out["fill_seconds"] = time.perf_counter() - began
        log(f"{name}: {out['bulk_insert_rows_per_s']:,.0f} rows/s; measuring at {big:,} ...")
        out["sizes"][big] = measure(client, big, repeat)
    client.close()
    shutil.rmtree(store, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="adapters registered through register_many")
    parser.add_argument(
        "--pg-n", type=int, default=1_000_000, help="PostgreSQL catalog size for the second round"
    )
    parser.add_argument("--repeat", type=int, default=2000, help="samples per latency measurement")
    parser.add_argument(
        "--writers", type=int, default=os.cpu_count() or 2, help="processes in the parallel round"
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--pg-url", help="an existing, empty PostgreSQL database (default: start a throwaway one)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "catalog.json")
    args = parser.parse_args()
    backends = args.backends.split(",")

    began = time.perf_counter()
    log(f"serializing {args.n:,} real ULPT adapters (d={HIDDEN}, n={N_TOKENS}, r={RANK}) ...")
    blobs = make_blobs(args.n)
    work = Path(tempfile.mkdtemp(prefix="ulpt-bench-", dir=os.environ.get("ULPT_BENCH_DIR")))
    results: dict[str, Any] = {}
    try:
        if "sqlite" in backends:
            url = sqlite_url(work / "catalog.db")
            results["sqlite"] = run_backend("sqlite", url, blobs, work, 0, args.repeat, args.writers)
        if "postgresql" in backends:
            if args.pg_url:
                results["postgresql"] = run_backend(
                    "postgresql", args.pg_url, blobs, work, args.pg_n, args.repeat, args.writers
                )
            else:
                from tests.services import running_postgres

                with running_postgres(durable=True, settings=["shared_buffers=1GB"]) as server:
                    url = server.create_database("bench")
                    results["postgresql"] = run_backend(
                        "postgresql", url, blobs, work, args.pg_n, args.repeat, args.writers
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args, time.perf_counter() - began)


def report(results: dict[str, Any], args: argparse.Namespace, seconds: float) -> None:
    table = Table(title="ulpt catalog benchmark (ms; rates per second)")
    for column in ("backend", "adapters", "operation", "p50", "p99", "mean"):
        table.add_column(column, justify="right" if column not in ("backend", "operation") else "left")
    for backend, data in results.items():
        table.add_row(
            backend, f"{args.n:,}", "register_many, 1 writer", f"{data['register_many_per_s']:,.0f}/s", "", ""
        )
        table.add_row(
            backend,
            "",
            f"register_many, {data['writers']} writers",
            f"{data['register_many_parallel_per_s']:,.0f}/s",
            "",
            "",
        )
        if "bulk_insert_rows_per_s" in data:
            table.add_row(
                backend, "", "catalog bulk insert (fill)", f"{data['bulk_insert_rows_per_s']:,.0f}/s", "", ""
            )
        for size, ops in data["sizes"].items():
            for op, stats in ops.items():
                table.add_row(backend, f"{size:,}", op, f"{stats['p50_ms']:.2f}", f"{stats['p99_ms']:.2f}",
                              f"{stats['mean_ms']:.2f}")  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "catalog",
        "date": datetime.now(timezone.utc).isoformat(),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "settings": {
            "n": args.n,
            "pg_n": args.pg_n,
            "repeat": args.repeat,
            "batch": BATCH,
            "tenants": TENANTS,
        },
        "adapter": {"method": "ulpt", "hidden_size": HIDDEN, "n_tokens": N_TOKENS, "rank": RANK},
        "seconds": seconds,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
