"""What a tenant sees of its jobs: the spec as it sent it and errors it can act on, without the
service's own details.

A job submitted over HTTP trains on local copies of the tenant's uploads, so its recorded spec and
its errors name the service's temporary paths (`/tmp/ulpt-upload-.../file-....jsonl`); its timings
name the driver's host and process id, and its fits the worker that trained them. Every job and fit
the control plane returns (routes, event streams, OpenAI's fine-tuning objects) passes through here:
an upload's copy reads as the file id it came from, host and process are left out.
"""

from __future__ import annotations

import re
from typing import Any

_COPY = re.compile(r"[^\s'\"]*/ulpt-(?:upload|ft)-[^/\s'\"]*/(?:(file-[0-9a-f]{24})\.jsonl|[^\s'\":,]+)")
"""A temporary copy made for a submission: `with_uploads` names it after its file id; a fine-tuning
job's rows (`ulpt-ft-.../training.jsonl`) come from the job's `training_file`."""
SERVICE_ONLY = ("driver",)
"""Timings that describe the service (the driver's host:pid), not the job."""


def scrub_text(text: str) -> str:
    return _COPY.sub(lambda match: match.group(1) or "<uploaded file>", text)


def scrubbed(value: Any) -> Any:
    """`value` (JSON data) with every string's temporary paths replaced."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {key: scrubbed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrubbed(item) for item in value]
    return value


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job's dict (`JobStatus.to_dict`, with or without its spec and fits) as its tenant sees it."""
    out = scrubbed(job)
    if isinstance(out.get("timings"), dict):
        out["timings"] = {k: v for k, v in out["timings"].items() if k not in SERVICE_ONLY}
    if isinstance(out.get("fits"), list):
        out["fits"] = [fit_view(fit) for fit in out["fits"]]
    return out


def fit_view(fit: dict[str, Any]) -> dict[str, Any]:
    """A fit's dict as its tenant sees it: no worker host or process."""
    out = scrubbed(fit)
    out["worker"] = None
    return out
