"""Following a job from the catalog: a rich progress bar (fits done / total, fits/s, ETA, failures,
and how many of the evaluated fits learned: beat zero-shot on their held-out rows).

Any process can follow any job this way (the CLI, a notebook, another machine), because the workers
write each fit's outcome to the catalog as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ulpt.catalog.lifecycle import FIT_TERMINAL, FitRowState
from ulpt_jobs.state import JobStatus


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- fits/s" if speed is None else f"{speed:.2f} fits/s", style="progress.data.speed")


def follow(
    read: Callable[[], JobStatus],
    *,
    keep_going: Callable[[JobStatus], bool],
    progress: bool,
    console: Console | None = None,
    poll_s: float = 1.0,
    timeout: float | None = None,
) -> JobStatus:
    """Poll `read()` until `keep_going(status)` is false (or `timeout` passes), drawing a bar if asked."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[learned]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not progress,
        transient=False,
        speed_estimate_period=60.0,
    )
    with bar:
        status = read()
        task = bar.add_task(_describe(status), total=status.n_fits or None, failed=0, learned="")
        while True:
            ended = sum(status.counts.get(state, 0) for state in FIT_TERMINAL)
            bar.update(
                task,
                completed=ended,
                total=status.n_fits or None,
                failed=status.counts.get(FitRowState.FAILED, 0),
                learned=learned_text(status),
                description=_describe(status),
            )
            if not keep_going(status):
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {status.id} is still {status.status} after {timeout} s")
            time.sleep(poll_s)
            status = read()


def learned_text(status: JobStatus) -> str:
    """'12 of 15 learned' once some fit has a verdict; '' before (or for fits without held-out rows)."""
    evaluated = status.verdicts.get("evaluated", 0)
    return f"{status.verdicts.get('learned', 0)} of {evaluated} learned" if evaluated else ""


def _describe(status: JobStatus) -> str:
    return f"job {status.id[:8]} {status.status}"
