"""`ulpt jobs list|show|plot|cancel`: bulk training jobs, read from the catalog (any process, any time)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ulpt.catalog.lifecycle import FitRowState, JobState
from ulpt.cli.catalog_options import (
    CatalogUrlOption,
    HomeOption,
    JsonOption,
    StoreUrlOption,
    TenantOption,
    make_client,
)
from ulpt.cli.output import console, print_json
from ulpt.jobs_api import JobsAPI

if TYPE_CHECKING:
    from ulpt_jobs.state import FitStatus, JobStatus

jobs_app = typer.Typer(
    name="jobs",
    help="Bulk training jobs: list, show, plot, cancel.",
    no_args_is_help=True,
    add_completion=False,
)


def _jobs(home: Path | None, catalog_url: str | None, store_url: str | None, tenant: str) -> JobsAPI:
    return JobsAPI(make_client(home, catalog_url, store_url, tenant))


@jobs_app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help=f"One of {', '.join(JobState)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """The tenant's jobs, newest first."""
    found = _jobs(home, catalog_url, store_url, tenant).list(status=status, limit=limit)
    if as_json:
        print_json([job.to_dict() for job in found])
        return
    table = Table()
    for column in ("id", "name", "status", "done", "failed", "fits", "created (UTC)", "took"):
        table.add_column(column, overflow="fold")
    for job in found:
        table.add_row(
            job.id,
            job.name or "",
            job.status,
            str(job.counts["done"]),
            str(job.counts["failed"]),
            str(job.n_fits),
            _time(job.created_at),
            _took(job),
        )
    console.print(table)


@jobs_app.command("show")
def show_job(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    fits: Annotated[int, typer.Option(min=0, help="Show at most this many fits (failed ones first).")] = 20,
    curves: Annotated[bool, typer.Option("--curves", help="With --json: include loss curves.")] = False,
    as_json: JsonOption = False,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """A job's status, fit counts, timings and its fits (adapter, metrics or error)."""
    handle = _jobs(home, catalog_url, store_url, tenant).get(job_id)
    if as_json:
        print_json(handle.to_dict(fits=True, curves=curves))
        return
    print_job(handle.status(), handle.fits(), limit=fits)


@jobs_app.command("plot")
def plot_job(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")] = Path("curves.png"),
    max_fits: Annotated[int, typer.Option("--max-fits", min=1, help="Curves drawn (median over all).")] = 50,
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Per-fit training loss curves of a job as a PNG."""
    path = _jobs(home, catalog_url, store_url, tenant).get(job_id).plot(output, max_fits=max_fits)
    console.print(f"wrote {path}")


@jobs_app.command("cancel")
def cancel_job(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    tenant: TenantOption = "default",
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Stop a job; its unfinished fits go back to pending (`ulpt train --resume ID` continues)."""
    _jobs(home, catalog_url, store_url, tenant).cancel(job_id)
    console.print(f"job {job_id} cancelled")


def print_job(status: JobStatus, fits: Sequence[FitStatus], limit: int = 20) -> None:
    """A one-paragraph summary, then a table of fits (failed first)."""
    counts = status.counts
    console.print(
        f"[bold]job {status.id}[/] {status.name or ''} — [bold]{status.status}[/]: {counts['done']} done, "
        f"{counts['failed']} failed, {counts['running']} running, {counts['pending']} pending "
        f"of {status.n_fits}; took {_took(status)}",
        highlight=False,
    )
    if status.error:
        console.print(f"  {status.error}", highlight=False)
    train_s = status.timings.get("train_s")
    if train_s and counts["done"]:
        console.print(
            f"  {counts['done'] / train_s:.2f} fits/s over {train_s:.1f} s of Ray Train", highlight=False
        )
    evaluated = status.verdicts.get("evaluated", 0)
    if evaluated:
        console.print(
            f"  {status.verdicts.get('learned', 0)} of {evaluated} evaluated fit(s) learned: beat zero-shot "
            "on their held-out rows beyond the 95% interval (`ulpt adapters list --metric learned>=1`)",
            highlight=False,
        )
    if not fits or limit == 0:
        return
    ordered = sorted(fits, key=lambda f: f.status != FitRowState.FAILED)[:limit]
    table = Table()
    for column in ("fit", "status", "adapter", "eval_loss", "eval_accuracy", "zero_shot", "learned"):
        table.add_column(column, overflow="fold")
    for column in ("steps", "error"):
        table.add_column(column, overflow="fold")
    for fit in ordered:
        m = fit.metrics
        table.add_row(
            fit.key,
            fit.status,
            fit.adapter or "",
            _num(m.get("eval_loss")),
            _num(m.get("eval_accuracy")),
            _num(m.get("zero_shot_accuracy", m.get("zero_shot_loss"))),
            {1.0: "yes", 0.0: "no"}.get(m.get("learned", -1), ""),
            str(m.get("steps", "")),
            fit.error or "",
        )
    console.print(table)
    if len(fits) > limit:
        console.print(f"... and {len(fits) - limit} more fit(s); use --fits N or --json", highlight=False)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _took(job: JobStatus) -> str:
    if job.started_at is None:
        return ""
    end = job.finished_at or datetime.now(job.started_at.tzinfo)
    return f"{(end - job.started_at).total_seconds():.1f} s"
