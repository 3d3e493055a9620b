"""`/v1/jobs`: submit, list, show, cancel and resume the tenant's bulk training jobs; their events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ulpt.catalog.lifecycle import FitRowState, JobState
from ulpt_control.auth import READ, TRAIN, Caller, context
from ulpt_control.errors import ApiError
from ulpt_control.events import job_events
from ulpt_control.submission import check_spec, parse_spec, with_uploads
from ulpt_control.views import fit_view, job_view
from ulpt_serving.bodies import read_body

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_STATUSES = f"^({'|'.join(JobState)})$"
FIT_STATUSES = f"^({'|'.join(FitRowState)})$"
SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "A JobSpec (docs/jobspec.schema.json)"}
            },
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@router.post("", status_code=201, openapi_extra=SPEC_BODY, summary="Submit a bulk training job")
async def submit_job(request: Request, caller: Caller = TRAIN) -> dict[str, Any]:
    """The JobSpec of `ulpt train` as JSON or YAML; data paths are uploaded file ids (`file-...`),
    `bigbench:TASK`, or `s3://` URLs under the service's allowed prefixes. Validated against its data
    and model before anything is recorded; runs at once."""
    ctx = context(request)
    body = await read_body(request, ctx.config.max_spec_bytes, ApiError, "job spec")
    spec = parse_spec(body, request.headers.get("content-type", ""))
    check_spec(spec, ctx.config)

    def submit() -> dict[str, Any]:
        jobs = ctx.jobs(caller.tenant)
        with with_uploads(spec.owned_by(caller.tenant), ctx.registry.files(caller.tenant)) as local:
            handle = jobs.submit(local)
        return job_view(handle.to_dict(fits=False))

    return await run_in_threadpool(submit)


@router.get("", summary="List jobs, newest first")
def list_jobs(
    request: Request,
    status: str | None = Query(None, pattern=JOB_STATUSES),
    limit: int = Query(50, ge=1, le=1000),
    caller: Caller = READ,
) -> dict[str, Any]:
    jobs = context(request).jobs(caller.tenant).list(status=status, limit=limit)
    return {"items": [job_view(job.to_dict()) for job in jobs]}


@router.get("/{job_id}", summary="A job: status, counts, timings (and its fits with fits=true)")
def show_job(request: Request, job_id: str, fits: bool = False, caller: Caller = READ) -> dict[str, Any]:
    handle = context(request).jobs(caller.tenant).get(job_id)
    out = handle.to_dict(fits=fits)
    out["spec"] = handle.status().spec
    return job_view(out)


@router.get("/{job_id}/fits", summary="A job's fits: status, adapter, metrics or error")
def job_fits(
    request: Request,
    job_id: str,
    status: str | None = Query(None, pattern=FIT_STATUSES),
    curves: bool = False,
    caller: Caller = READ,
) -> dict[str, Any]:
    handle = context(request).jobs(caller.tenant).get(job_id)
    return {"items": [fit_view(fit.to_dict(curves=curves)) for fit in handle.fits(status=status)]}


@router.post("/{job_id}/cancel", summary="Cancel a job (unfinished fits go back to pending)")
def cancel_job(request: Request, job_id: str, caller: Caller = TRAIN) -> dict[str, Any]:
    jobs = context(request).jobs(caller.tenant)
    jobs.get(job_id).cancel()
    return job_view(jobs.get(job_id).to_dict(fits=False))


@router.post("/{job_id}/resume", summary="Resume a failed or cancelled job: only unfinished fits train")
def resume_job(request: Request, job_id: str, caller: Caller = TRAIN) -> dict[str, Any]:
    handle = context(request).jobs(caller.tenant).resume(job_id)
    return job_view(handle.to_dict(fits=False))


@router.get(
    "/{job_id}/events",
    summary="A job's progress as server-sent events (status, fit, end)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
def job_event_stream(request: Request, job_id: str, caller: Caller = READ) -> StreamingResponse:
    ctx = context(request)
    handle = ctx.jobs(caller.tenant).get(job_id)  # 404 before the stream starts
    return StreamingResponse(
        job_events(handle, ctx.config.events_poll_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )
