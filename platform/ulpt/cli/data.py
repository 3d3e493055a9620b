"""`ulpt data`: the tasks ulpt generates (the demo's data), and BIG-bench, an optional source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ulpt.cli.output import console
from ulpt.data.generated import TASKS, split_task

data_app = typer.Typer(
    help="Data: write a generated task as JSON lines, or fetch BIG-bench tasks (optional, on request).",
    no_args_is_help=True,
)


@data_app.command("tasks")
def tasks() -> None:
    """List the tasks ulpt generates itself (deterministic from a seed; no download)."""
    for task in TASKS.values():
        console.print(f"{task.name:18} {task.description}", highlight=False)


@data_app.command("generate")
def generate(
    task: Annotated[str, typer.Argument(help="A generated task's name (see `ulpt data tasks`).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for train.jsonl, validation.jsonl, test.jsonl.")
    ],
    train: Annotated[int, typer.Option(min=1, help="Training rows.")] = 400,
    validation: Annotated[int, typer.Option(min=0, help="Validation rows.")] = 40,
    test: Annotated[int, typer.Option(min=0, help="Test rows.")] = 100,
    seed: Annotated[int, typer.Option(help="The generator's seed: the same seed, the same rows.")] = 0,
) -> None:
    """Write a generated task's splits as JSON lines ({input, target, choices}); no input is in two splits."""
    splits = dict(zip(("train", "validation", "test"), split_task(task, train, validation, test, seed)))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print(
        f"{task}: {train} train, {validation} validation, {test} test rows in {out}", highlight=False
    )


@data_app.command("bigbench")
def bigbench(
    names: Annotated[
        list[str], typer.Argument(help="BIG-bench task names, e.g. arithmetic/2_digit_addition.")
    ],
) -> None:
    """Fetch BIG-bench tasks into the cache, from $ULPT_BIGBENCH or the repository's
    archive, each file checked against ulpt's SHA-256 list. Jobs then read them as `bigbench:TASK`;
    servers never fetch on a tenant's request, they read the cache only."""
    from ulpt.data.bigbench import prefetch_tasks

    for name, path in prefetch_tasks(names, remote=True).items():
        console.print(f"{name}: {path}", highlight=False)
