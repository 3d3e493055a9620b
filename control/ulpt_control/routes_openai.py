"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning API for one adapter (create, list, retrieve, cancel,
events), on the same jobs as `/v1/jobs`. Files come from `/v1/files` with purpose fine-tune."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ulpt.catalog.lifecycle import FitRowState
from ulpt.errors import SpecError
from ulpt_control.auth import READ, TRAIN, Caller, context
from ulpt_control.errors import not_found
from ulpt_control.finetune import (
    FineTuneRequest,
    is_fine_tune,
    job_object,
    job_spec,
    training_rows,
    write_rows,
)
from ulpt_control.submission import check_base_model
from ulpt_jobs.handle import JobHandle

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai fine-tuning"])


def fine_tune_job(request: Request, caller: Caller, job_id: str) -> JobHandle:
    """The tenant's fine-tuning job `job_id`; a bulk job's id answers like a missing one."""
    handle = context(request).jobs(caller.tenant).get(job_id)
    if not is_fine_tune(handle.status()):
        raise not_found("fine-tuning job")
    return handle


def as_object(handle: JobHandle) -> dict[str, Any]:
    return job_object(handle.status(), handle.fits())


@router.post("", summary="Create a fine-tuning job (one adapter)")
def create(request: Request, body: FineTuneRequest, caller: Caller = TRAIN) -> dict[str, Any]:
    ctx = context(request)
    check_base_model(body.model, ctx.config, "model")
    files = ctx.registry.files(caller.tenant)
    if files.get(body.training_file).purpose != "fine-tune":
        raise SpecError("training_file: upload it with purpose fine-tune")
    rows = training_rows(files.rows(body.training_file))
    jobs = ctx.jobs(caller.tenant)
    with tempfile.TemporaryDirectory(prefix="ulpt-ft-") as folder:
        spec = job_spec(body, write_rows(rows, Path(folder))).owned_by(caller.tenant)
        handle = jobs.submit(spec)
    return as_object(handle)


@router.get("", summary="The tenant's fine-tuning jobs, newest first")
def list_jobs(
    request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None, caller: Caller = READ
) -> dict[str, Any]:
    jobs = context(request).jobs(caller.tenant)
    found = [s for s in jobs.list(limit=1000) if is_fine_tune(s)]
    if after is not None:
        ids = [s.id for s in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    page = found[:limit]
    return {
        "object": "list",
        "data": [as_object(jobs.get(s.id)) for s in page],
        "has_more": len(found) > limit,
    }


@router.get("/{job_id}", summary="Retrieve a fine-tuning job")
def retrieve(request: Request, job_id: str, caller: Caller = READ) -> dict[str, Any]:
    return as_object(fine_tune_job(request, caller, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a fine-tuning job")
async def cancel(request: Request, job_id: str, caller: Caller = TRAIN) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        handle = fine_tune_job(request, caller, job_id)
        handle.cancel()
        return as_object(handle)

    return await run_in_threadpool(run)


@router.get("/{job_id}/events", summary="A fine-tuning job's events, newest first")
def events(
    request: Request, job_id: str, limit: int = Query(20, ge=1, le=100), caller: Caller = READ
) -> dict[str, Any]:
    handle = fine_tune_job(request, caller, job_id)
    status, fits = handle.status(), handle.fits()
    found = [(status.created_at, "info", "job created", "created")]
    if status.started_at:
        found.append((status.started_at, "info", "training started", "running"))
    for fit in fits:
        if fit.status == FitRowState.DONE:
            found.append(
                (fit.finished_at or status.created_at, "info", f"fine-tuned model {fit.adapter} ready", "fit")
            )
        elif fit.status == FitRowState.FAILED:
            found.append(
                (fit.finished_at or status.created_at, "error", f"training failed: {fit.error}", "fit")
            )
    if status.finished_at:
        found.append((status.finished_at, "info", f"job {job_object(status, fits)['status']}", "finished"))
    data = [
        {
            "id": f"{status.id}-{kind}-{index}",
            "object": "fine_tuning.job.event",
            "created_at": int(when.timestamp()),
            "level": level,
            "message": message,
            "data": {},
            "type": "message",
        }
        for index, (when, level, message, kind) in enumerate(found)
    ]
    data.reverse()
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}
