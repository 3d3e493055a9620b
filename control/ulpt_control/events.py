"""A job's progress as server-sent events: `status` when its counts change, `fit` when a fit changes
state (with its metrics once done, or its error), `end` once the job has finished.

The stream reads the catalog every `poll_s` (the job's state lives there, whichever process drives
it), so any replica can serve it and a reconnecting client simply starts over.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from ulpt_control.views import fit_view, job_view
from ulpt_jobs.handle import JobHandle


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(handle: JobHandle, poll_s: float) -> AsyncIterator[str]:
    last_status: dict[str, Any] | None = None
    fit_states: dict[str, tuple[str, int]] = {}
    while True:
        status = await run_in_threadpool(handle.status)
        fits = await run_in_threadpool(handle.fits)
        shown = status.to_dict()
        comparable = {k: shown[k] for k in ("status", "counts", "error")}
        if comparable != last_status:
            last_status = comparable
            yield sse("status", job_view(shown))
        for fit in fits:
            state = (fit.status, fit.attempts)
            if fit_states.get(fit.key) != state:
                fit_states[fit.key] = state
                yield sse("fit", fit_view(fit.to_dict()))
        if status.finished:
            yield sse("end", {"id": status.id, "status": status.status})
            return
        await asyncio.sleep(poll_s)
