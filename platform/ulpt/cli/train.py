"""`ulpt train SPEC.yaml | flags`: submit a bulk training job (or `--resume` one), optionally wait for it.

Flags override the YAML (or build the whole spec in the simple case):

    ulpt train job.yaml --wait
    ulpt train --base-model ./models/tiny --data reviews.jsonl --input text --target label \\
               --group-by user_id --name "user-{user_id}" --steps 100 --wait --json
    ulpt train job.yaml --lr 0.03 --lr 0.1 --lr 0.3 --wait     # each fit keeps its best rate
    ulpt train job.yaml --rank 2 --rank 8 --n-tokens 10 --wait  # ... or its best rank
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ulpt.adapters import methods
from ulpt.catalog.lifecycle import FitRowState, JobState
from ulpt.cli.catalog_options import CatalogUrlOption, HomeOption, StoreUrlOption, make_client
from ulpt.cli.jobs import print_job
from ulpt.cli.output import console, fail, print_json
from ulpt.errors import UlptError
from ulpt.jobs_api import JobHandle, JobsAPI
from ulpt.jobspec import JobSpec

_FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "base_model": ("base_model",),
    "input_column": ("dataset", "input"),
    "target_column": ("dataset", "target"),
    "group_by": ("dataset", "group_by"),
    "per_file": ("dataset", "per_file"),
    "eval_fraction": ("dataset", "eval_fraction"),
    "method": ("adapter", "method"),
    "n_tokens": ("adapter", "n_tokens"),
    "rank": ("adapter", "rank"),
    "seed": ("adapter", "seed"),
    "seed_policy": ("adapter", "seed_policy"),
    "steps": ("train", "steps"),
    "epochs": ("train", "epochs"),
    "lr": ("train", "lr"),
    "preset": ("train", "preset"),
    "batch_size": ("train", "batch_size"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "max_attempts": ("train", "max_attempts"),
    "name": ("name",),
    "num_workers": ("num_workers",),
    "use_gpu": ("use_gpu",),
    "dtype": ("dtype",),
    "job_name": ("job_name",),
}

_SWEEPABLE = ("lr", "rank", "n_tokens")


def train(
    spec_file: Annotated[
        Path | None, typer.Argument(help="YAML job spec (flags override its fields).")
    ] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="Model folder or name.")] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Data file, glob or s3:// URL (repeatable).")
    ] = None,
    input_column: Annotated[str | None, typer.Option("--input", help="Input text column.")] = None,
    target_column: Annotated[str | None, typer.Option("--target", help="Target column.")] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="One fit per value of this column.")
    ] = None,
    per_file: Annotated[bool, typer.Option("--per-file", help="One fit per data file.")] = False,
    eval_fraction: Annotated[float | None, typer.Option("--eval-fraction", help="Held-out share.")] = None,
    method: Annotated[str | None, typer.Option(help=escape(methods.help_text()))] = None,
    n_tokens: Annotated[
        list[int] | None, typer.Option("--n-tokens", help="Prompt tokens n; repeat it for a packed sweep.")
    ] = None,
    rank: Annotated[list[int] | None, typer.Option(help="Rank r; repeat it for a packed sweep.")] = None,
    seed: Annotated[int | None, typer.Option(help="Adapter seed (the job seed with per_fit).")] = None,
    seed_policy: Annotated[str | None, typer.Option("--seed-policy", help="shared or per_fit.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps per fit.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs per fit (instead of steps).")] = None,
    lr: Annotated[
        list[float] | None,
        typer.Option(help="Peak learning rate (default: the method's); repeat it for a packed sweep."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Where an unset lr comes from: measured (default) or paper.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Rows per fit per step.")] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", help="Checkpoint in-flight fits every N steps (0: never)."),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", help="Fail a fit after its worker died this many times with it."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name template, e.g. user-{user_id}.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE adapter tag (repeatable).")
    ] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers", help="Ray Train workers.")] = None,
    use_gpu: Annotated[
        bool, typer.Option("--use-gpu", help="GPUs for the workers (spec gpus_per_worker, default 1).")
    ] = False,
    dtype: Annotated[
        str | None,
        typer.Option(help="Base model dtype: auto (bfloat16 on GPU, float32 on CPU), float32 or bfloat16."),
    ] = None,
    job_name: Annotated[str | None, typer.Option("--job-name", help="Label in `ulpt jobs list`.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Run in the foreground until the job ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="ULPT_RAY_ADDRESS",
            help=(
                "Ray cluster: http://HEAD:8265 submits there, HOST:6379 joins it. Default: $RAY_ADDRESS, "
                "else the cluster `ray start --head` started on this machine, else a new local Ray "
                "(`local` always starts one)."
            ),
        ),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue job ID: only its unfinished fits train.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: even if its driver seems alive.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and plan only; record nothing.")
    ] = False,
    tenant: Annotated[
        str | None, typer.Option("--tenant", envvar="ULPT_TENANT", help="Tenant (default: the spec's).")
    ] = None,
    home: HomeOption = None,
    catalog_url: CatalogUrlOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Train many adapters as one Ray job: from a YAML spec and/or flags, or --resume JOB."""
    flags = {k: v for k, v in locals().items() if k in _FLAG_FIELDS and v is not None and v is not False}
    if resume is not None:
        if spec_file is not None or flags or data or tag or dry_run:
            raise typer.BadParameter("--resume takes a job id only (its spec is in the catalog)")
        client = make_client(home, catalog_url, store_url, tenant or "default")
        handle = JobsAPI(client, ray_address=address).resume(resume, detach=not wait, force=force)
        _report(handle, wait=wait, as_json=as_json)
        return
    spec = build_spec(spec_file, flags, data, tag)
    client = make_client(home, catalog_url, store_url, tenant or spec.tenant or "default")
    jobs = JobsAPI(client, ray_address=address)
    if dry_run:
        _dry_run(jobs, spec, as_json)
        return
    handle = jobs.submit(spec, detach=not wait)
    try:
        _report(handle, wait=wait, as_json=as_json)
    except KeyboardInterrupt:
        with contextlib.suppress(UlptError):  # it may have ended meanwhile
            handle.cancel()  # the workers die with this process; `--resume` continues the unfinished fits
        raise


def build_spec(
    spec_file: Path | None, flags: dict[str, Any], data: list[str] | None, tags: list[str] | None
) -> JobSpec:
    """The YAML spec with flags applied on top (validated as a whole, like the YAML alone)."""
    base = JobSpec.from_yaml(spec_file).to_dict() if spec_file is not None else {}
    for flag, value in flags.items():
        path = _FLAG_FIELDS[flag]
        if flag in _SWEEPABLE and isinstance(value, list):
            if len(value) == 1:
                value = value[0]  # one --lr, --rank or --n-tokens is a value; several are a sweep
            elif flag != "lr":
                path = ("train", flag)  # the adapter keeps one value; the sweep tries each
        *sections, key = path
        node = base
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    if data:
        base.setdefault("dataset", {})["path"] = list(data)
    if tags:
        from ulpt.catalog.names import normalize_tags

        base["tags"] = {**base.get("tags", {}), **normalize_tags(tags)}
    if spec_file is None and "base_model" not in base:
        raise typer.BadParameter("give a SPEC.yaml, or at least --base-model and --data")
    return JobSpec.from_dict(base)


def _dry_run(jobs: JobsAPI, spec: JobSpec, as_json: bool) -> None:
    from ulpt_jobs.plan import make_plan

    plan = make_plan(spec.owned_by(jobs.tenant).with_absolute_paths(), jobs.target().home)
    bad = [fit for fit in plan.fits if fit.error]
    summary = {
        "fits": len(plan.fits),
        "rows_read": plan.rows_read,
        "hidden_size": plan.hidden_size,
        "failing_fits": {fit.key: fit.error for fit in bad},
        "first_fits": [{"key": f.key, "name": f.name, **f.record()} for f in plan.fits[:5]],
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"spec OK: {len(plan.fits)} fit(s) from {plan.rows_read} row(s), hidden size {plan.hidden_size}; "
        f"{len(bad)} fit(s) would fail at once"
    )
    for fit in bad[:10]:
        console.print(f"  {fit.key}: {fit.error}", highlight=False)


def _report(handle: JobHandle, *, wait: bool, as_json: bool) -> None:
    if not wait:
        if as_json:
            print_json({**handle.status().to_dict(), "log": str(handle.log_path)})
        else:
            tenant = handle.status().tenant
            flag = "" if tenant == "default" else f" --tenant {tenant}"
            where = f" as Ray job {handle.remote.submission_id}" if handle.remote else ""
            console.print(
                f"job {handle.id} submitted{where}; follow it with `ulpt jobs show {handle.id}{flag}`"
            )
        return
    # Ray's driver prints the raylet's warnings to stdout; with --json, stdout holds the JSON alone.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        status = handle.wait(progress=not as_json and sys.stderr.isatty())
    if as_json:
        print_json(handle.to_dict(fits=True))
    else:
        print_job(status, handle.fits())
    failed = status.counts.get(FitRowState.FAILED, 0)
    if failed:  # a job that trained only some of its adapters did not do what was asked
        fail(
            f"{failed} of {status.n_fits} fit(s) of job {status.id} failed; "
            f"`ulpt jobs show {status.id}` says why"
        )
    if status.status != JobState.DONE:
        fail(f"job {status.id} ended {status.status}: {status.error or 'see `ulpt jobs show`'}")
