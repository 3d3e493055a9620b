"""The SDK in remote mode: `client.adapters` and `client.jobs` over the control plane's HTTP API.

    export ULPT_API_URL=https://ulpt.example.com/control ULPT_API_KEY=ulpt_...
    client = ulpt.Client()                 # remote: the key's tenant, no database or store credentials
    job = client.train(ulpt.JobSpec.from_yaml("job.yaml"))   # local data files are uploaded first
    job.wait(); client.adapters.find(order_by="-metrics.eval_accuracy")

The calls and the objects they return are those of direct mode (records, pages, job statuses); what
needs the catalog or the store themselves (registering a local adapter, gc) stays in direct mode.
Only the standard library speaks HTTP here; the key goes in one header and is never printed.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from ulpt.adapters import Adapter
from ulpt.catalog.files import FILE_ID
from ulpt.errors import ConflictError, NotFoundError, SpecError, UlptError
from ulpt.jobspec import JobSpec
from ulpt.registry import AdapterRecord, AliasChange, Lineage, Page
from ulpt_jobs.state import FitStatus, JobStatus

STATUS_ERRORS: dict[int, type[UlptError]] = {400: SpecError, 404: NotFoundError, 409: ConflictError}


class Api:
    """One control plane and one key; `request` returns the decoded JSON (or bytes) or raises UlptError."""

    def __init__(self, url: str, key: str, timeout_s: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise SpecError("ULPT_API_URL must start with http:// or https://")
        self.url = url.rstrip("/")
        self._key = key
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        query = urllib.parse.urlencode(
            [
                (k, v)
                for k, vs in (params or {}).items()
                for v in (vs if isinstance(vs, list) else [vs])
                if v is not None
            ],
            doseq=False,
        )
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        body = json.dumps(json_body).encode() if json_body is not None else data
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise _error(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise UlptError(f"cannot reach the control plane at {self.url}: {exc.reason}") from None
        return payload if raw else json.loads(payload)

    def __repr__(self) -> str:  # never the key
        return f"Api({self.url!r})"


def _error(status: int, payload: bytes) -> UlptError:
    try:
        message = json.loads(payload)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {status}"
    return STATUS_ERRORS.get(status, UlptError)(f"{message} (HTTP {status})" if status >= 401 else message)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def record_of(data: dict[str, Any]) -> AdapterRecord:
    names = {f.name for f in dataclasses.fields(AdapterRecord) if not f.name.startswith("_")}
    values = {k: v for k, v in data.items() if k in names}
    values.setdefault("blob_key", "")
    values["created_at"], values["deleted_at"] = _time(data["created_at"]), _time(data.get("deleted_at"))
    return AdapterRecord(**values)


def job_status_of(data: dict[str, Any]) -> JobStatus:
    names = [f.name for f in dataclasses.fields(JobStatus)]
    values: dict[str, Any] = {k: data.get(k) for k in names}
    for key in ("created_at", "started_at", "finished_at"):
        values[key] = _time(data.get(key))
    values["spec"] = data.get("spec") or {}
    return JobStatus(**values)


def fit_status_of(data: dict[str, Any]) -> FitStatus:
    values: dict[str, Any] = {f.name: data.get(f.name) for f in dataclasses.fields(FitStatus)}
    values["started_at"], values["finished_at"] = (
        _time(data.get("started_at")),
        _time(data.get("finished_at")),
    )
    return FitStatus(**values)


class RemoteAdapters:
    """`client.adapters` over HTTP: find, get, show, load, alias, rollback, unalias, aliases, delete."""

    def __init__(self, api: Api) -> None:
        self._api = api

    def find(
        self, *, tenant: str | None = None, tags: Any = None, metrics: Any = None, **filters: Any
    ) -> Page:
        params = {k: v for k, v in filters.items() if k not in ("order_by", "status")}
        params["owner"] = tenant
        params["sort"] = filters.get("order_by", "-created_at")
        params["status"] = filters.get("status", "ready") or "all"
        params["tag"] = [f"{k}={v}" for k, v in tags.items()] if isinstance(tags, dict) else list(tags or [])
        params["metric"] = _thresholds(metrics)
        for key in ("created_after", "created_before"):
            if isinstance(params.get(key), datetime):
                params[key] = params[key].isoformat()
        params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}
        found = self._api.request("GET", "/v1/adapters", params=params)
        return Page(tuple(record_of(item) for item in found["items"]), found["next_cursor"])

    def get(self, ref: str) -> AdapterRecord:
        """Like direct mode, a deleted adapter is not found here (`show` still has it)."""
        record = self.show(ref).record
        if record.deleted_at is not None:
            raise NotFoundError(f"no adapter {ref!r} (deleted)")
        return record

    def show(self, ref: str) -> Lineage:
        found = self._api.request("GET", f"/v1/adapters/{_quote(ref)}")
        lineage = found["lineage"]
        return Lineage(record_of(found), None, (), tuple(lineage["aliases"]), lineage["job"])

    def load(self, ref: str) -> Adapter:
        """The adapter's bytes, checked by the server on the way out and rebuilt (and checked) here."""
        return Adapter.from_bytes(self._api.request("GET", f"/v1/adapters/{_quote(ref)}/download", raw=True))

    def alias(self, alias: str, ref: str) -> AliasChange:
        found = self._api.request("PUT", f"/v1/aliases/{_quote(alias)}", json_body={"target": ref})
        return AliasChange(alias, self.get(found["ref"]), found["previous"])

    def rollback(self, alias: str) -> AliasChange:
        found = self._api.request("POST", f"/v1/aliases/{_quote(alias)}/rollback")
        return AliasChange(alias, self.get(found["ref"]), found["previous"])

    def unalias(self, alias: str) -> None:
        self._api.request("DELETE", f"/v1/aliases/{_quote(alias)}")

    def aliases(self) -> list[tuple[str, AdapterRecord]]:
        items = self._api.request("GET", "/v1/aliases")["items"]
        return [(item["alias"], self.get(item["ref"])) for item in items]

    def delete(self, ref: str, *, all_versions: bool = False, force: bool = False) -> list[AdapterRecord]:
        params = {"all_versions": str(all_versions).lower(), "force": str(force).lower()}
        deleted = self._api.request("DELETE", f"/v1/adapters/{_quote(ref)}", params=params)
        return [record_of(item) for item in deleted["items"]]


class RemoteJob:
    """A job seen over HTTP: status, fits, wait, cancel (as `ulpt_jobs.handle.JobHandle`)."""

    def __init__(self, api: Api, job_id: str) -> None:
        self._api = api
        self.id = job_id

    def status(self) -> JobStatus:
        return job_status_of(self._api.request("GET", f"/v1/jobs/{self.id}"))

    def fits(self, status: str | None = None) -> list[FitStatus]:
        items = self._api.request("GET", f"/v1/jobs/{self.id}/fits", params={"status": status})["items"]
        return [fit_status_of(item) for item in items]

    def wait(self, progress: bool = False, timeout: float | None = None, poll_s: float = 1.0) -> JobStatus:
        """Poll until the job ends (the control plane's driver runs it); UlptError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise UlptError(f"job {self.id} still {status.status} after {timeout} s")
            time.sleep(poll_s)

    def cancel(self) -> None:
        self._api.request("POST", f"/v1/jobs/{self.id}/cancel")

    def to_dict(self, *, fits: bool = True, curves: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self._api.request(
            "GET", f"/v1/jobs/{self.id}", params={"fits": str(fits).lower()}
        )
        return out

    def __repr__(self) -> str:
        return f"RemoteJob({self.id!r})"


class RemoteJobs:
    """`client.jobs` over HTTP: submit (uploading local data files), resume, get, list, cancel."""

    def __init__(self, api: Api) -> None:
        self._api = api

    def submit(self, spec: JobSpec, **_options: Any) -> RemoteJob:
        if not isinstance(spec, JobSpec):
            raise UlptError(f"train needs a ulpt.JobSpec, got {type(spec).__name__}")
        uploaded: dict[str, str] = {}

        def remote(path: str) -> str:
            if "://" in path or path.startswith("bigbench:") or FILE_ID.fullmatch(path):
                return path
            if path not in uploaded:
                local = Path(path).expanduser()
                if local.suffix.lower() not in (".jsonl", ".json"):
                    raise SpecError(f"dataset.path: {path}: remote mode uploads JSON lines files only")
                params = {"filename": local.name, "purpose": "data"}
                data = local.read_bytes()
                sent = self._api.request(
                    "POST", "/v1/files", params=params, data=data, content_type="application/jsonl"
                )
                uploaded[path] = sent["id"]
            return uploaded[path]

        dataset = spec.dataset.model_copy(update={"path": tuple(remote(p) for p in spec.dataset.path)})
        fits = tuple(f.model_copy(update={"path": tuple(remote(p) for p in f.path)}) for f in spec.fits)
        body = spec.model_copy(update={"dataset": dataset, "fits": fits}).to_dict()
        return RemoteJob(self._api, self._api.request("POST", "/v1/jobs", json_body=body)["id"])

    def resume(self, job_id: str, **_options: Any) -> RemoteJob:
        return RemoteJob(self._api, self._api.request("POST", f"/v1/jobs/{job_id}/resume")["id"])

    def get(self, job_id: str) -> RemoteJob:
        job = RemoteJob(self._api, str(job_id))
        job.status()  # NotFoundError for an unknown or foreign job
        return job

    def list(self, *, status: str | None = None, limit: int = 50) -> list[JobStatus]:
        items = self._api.request("GET", "/v1/jobs", params={"status": status, "limit": limit})["items"]
        return [job_status_of(item) for item in items]

    def cancel(self, job_id: str) -> None:
        RemoteJob(self._api, str(job_id)).cancel()


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe="/:")


def _thresholds(metrics: Any) -> list[str]:
    if not metrics:
        return []
    if isinstance(metrics, dict):
        out = []
        for name, value in metrics.items():
            op, bound = value if isinstance(value, tuple) else ("==", value)
            out.append(f"{name}{op}{bound}")
        return out
    return list(metrics)
