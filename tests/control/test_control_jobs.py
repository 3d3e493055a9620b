"""Jobs over HTTP on the session's real local Ray: a spec whose data is an uploaded file trains, its
progress streams as server-sent events, and its adapters are found as the tenant's; specs naming
what the service must not read are refused before anything is recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import Plane
from tests.test_jobs_spec import job_dict, review_rows


def upload_reviews(plane: Plane, users: int = 3, tenant: str = "acme") -> str:
    rows = [r for u in range(users) for r in review_rows(u, 4, 0)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    made = plane.call("POST", "/v1/files", tenant=tenant, params={"filename": "reviews.jsonl"}, content=body)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def spec_for(model: Path, file_id: str, **overrides: Any) -> dict[str, Any]:
    spec = job_dict(model, Path("unused"), train={"steps": 2, "eval_every": 2}, **overrides)
    spec["dataset"]["path"] = file_id
    spec.pop("tenant")
    return spec


@pytest.fixture()
def job_plane(make_plane: Callable[..., Plane], tiny_model_dirs: dict[str, Path]) -> Plane:
    return make_plane(base_models=(str(tiny_model_dirs["llama"]),))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": {"path": "/etc/passwd"}}, "dataset.path: give an uploaded file id"),
        ({"dataset": {"path": "s3://bucket/other/x.jsonl"}}, "outside its allowed prefixes"),
        ({"base_model": "/srv/models/secret"}, "base_model: not offered"),
        ({"tenant": "globex"}, "tenant: the spec belongs to tenant 'globex'"),
        ({"num_workers": 64}, "num_workers: at most 8"),
    ],
)
def test_specs_reaching_outside_the_tenant_are_refused(
    job_plane: Plane, tiny_model_dirs: dict[str, Path], change: dict[str, Any], message: str
) -> None:
    spec = spec_for(tiny_model_dirs["llama"], upload_reviews(job_plane))
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    refused = job_plane.call("POST", "/v1/jobs", json=spec)
    assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
    assert job_plane.call("GET", "/v1/jobs").json()["items"] == []


def test_oversized_specs_are_refused_before_and_while_reading(
    make_plane: Callable[..., Plane], tiny_model_dirs: dict[str, Path]
) -> None:
    plane = make_plane(base_models=(str(tiny_model_dirs["llama"]),), max_spec_bytes=200)
    spec = json.dumps(spec_for(tiny_model_dirs["llama"], upload_reviews(plane))).encode()
    assert len(spec) > 200

    def chunks() -> Iterator[bytes]:  # no content-length: the limit must hold while streaming
        yield from (spec[i : i + 50] for i in range(0, len(spec), 50))

    for body in (spec, chunks()):
        refused = plane.call("POST", "/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["message"] == "the job spec is larger than 200 bytes"
    assert plane.call("GET", "/v1/jobs").json()["items"] == []


def test_another_tenants_file_cannot_be_trained_on(
    job_plane: Plane, tiny_model_dirs: dict[str, Path]
) -> None:
    theirs = upload_reviews(job_plane, tenant="globex")
    refused = job_plane.call("POST", "/v1/jobs", json=spec_for(tiny_model_dirs["llama"], theirs))
    assert refused.status_code == 404 and refused.json()["error"]["message"] == f"no file {theirs}"


def test_a_job_on_an_uploaded_file_trains_streams_progress_and_registers(
    ray_session: None, job_plane: Plane, tiny_model_dirs: dict[str, Path]
) -> None:
    file_id = upload_reviews(job_plane, users=3)
    yaml_body = json.dumps(spec_for(tiny_model_dirs["llama"], file_id))  # YAML is a superset of JSON
    made = job_plane.call("POST", "/v1/jobs", content=yaml_body, headers={"Content-Type": "application/yaml"})
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]
    assert job_plane.call("GET", f"/v1/jobs/{job_id}", tenant="globex").status_code == 404
    assert job_plane.call("GET", f"/v1/jobs/{job_id}/events", tenant="globex").status_code == 404

    with job_plane.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(job_plane)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(stream.iter_text())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and events[-1][1]["status"] == "done"
    finished_fits = {data["key"] for kind, data in events if kind == "fit" and data["status"] == "done"}
    assert finished_fits == {"0", "1", "2"}

    shown = job_plane.call("GET", f"/v1/jobs/{job_id}", params={"fits": True}).json()
    assert shown["status"] == "done" and len(shown["fits"]) == 3
    assert shown["spec"]["tenant"] == "acme"
    # the spec as sent (its file id, not the service's temporary copy); no host or process id
    assert shown["spec"]["dataset"]["path"] == [file_id] and "ulpt-upload-" not in json.dumps(shown)
    assert "driver" not in shown["timings"] and {fit["worker"] for fit in shown["fits"]} == {None}
    found = job_plane.call("GET", "/v1/adapters", params={"job_id": job_id}).json()["items"]
    assert sorted(a["name"] for a in found) == ["user-0", "user-1", "user-2"]
    assert [j["id"] for j in job_plane.call("GET", "/v1/jobs").json()["items"]] == [job_id]
    assert job_plane.call("GET", "/v1/jobs", tenant="globex").json()["items"] == []
    late = job_plane.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert late.status_code == 409 and "already done" in late.json()["error"]["message"]


def auth(plane: Plane, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {plane.keys[tenant]['all']}"}


def parse_sse(text: Any) -> list[tuple[str, dict[str, Any]]]:
    events, kind = [], None
    for line in "".join(text).splitlines():
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: ") and kind is not None:
            events.append((kind, json.loads(line[len("data: ") :])))
    return events


RESUMERS = 4


def test_of_concurrent_resumes_one_drives_the_job_and_the_others_get_409(
    ray_session: None, job_plane: Plane, tiny_model_dirs: dict[str, Path]
) -> None:
    made = job_plane.call(
        "POST", "/v1/jobs", json=spec_for(tiny_model_dirs["llama"], upload_reviews(job_plane))
    )
    job_id = made.json()["id"]
    assert job_plane.call("POST", f"/v1/jobs/{job_id}/cancel").status_code == 200
    start, answers = threading.Barrier(RESUMERS), []

    def resume() -> None:
        start.wait()
        answers.append(job_plane.call("POST", f"/v1/jobs/{job_id}/resume"))

    threads = [threading.Thread(target=resume) for _ in range(RESUMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answer.status_code for answer in answers) == [200] + [409] * (RESUMERS - 1)
    refusals = [answer.json()["error"] for answer in answers if answer.status_code == 409]
    assert all(
        e["type"] == "conflict_error" and "is running (its driver's heartbeat" in e["message"]
        for e in refusals
    )
    deadline, shown = time.monotonic() + 300, {}
    while time.monotonic() < deadline and shown.get("status") != "done":
        time.sleep(0.2)
        shown = job_plane.call("GET", f"/v1/jobs/{job_id}").json()
    assert (shown["status"], shown["counts"]["done"], shown["attempt"]) == ("done", 3, 2)
    found = job_plane.call("GET", "/v1/adapters", params={"job_id": job_id}).json()["items"]
    assert sorted(a["name"] for a in found) == ["user-0", "user-1", "user-2"]  # each trained once


def test_quotas_refuse_a_job_with_429_while_fits_wait_and_413_when_it_is_too_big(
    job_plane: Plane, tiny_model_dirs: dict[str, Path]
) -> None:
    """Pooled jobs are only recorded at submission (no Ray): 3 fits of 2 steps of 2 rows each."""
    from ulpt.catalog.quotas import set_tenant_quotas

    acme = job_plane.clients["acme"]
    body = json.dumps(
        spec_for(tiny_model_dirs["llama"], upload_reviews(job_plane, users=3), placement="pool")
    )
    with acme.catalog.session() as session:
        set_tenant_quotas(session, "acme", max_pending_fits=4)
    first = job_plane.call("POST", "/v1/jobs", content=body)
    assert first.status_code == 201, first.text
    refused = job_plane.call("POST", "/v1/jobs", content=body)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["type"] == "quota_error" and "3 fits are already waiting" in error["message"]
    assert "max_pending_fits" in error["message"] and "\n" not in error["message"]
    theirs = json.dumps(
        spec_for(tiny_model_dirs["llama"], upload_reviews(job_plane, tenant="globex"), placement="pool")
    )
    assert job_plane.call("POST", "/v1/jobs", tenant="globex", content=theirs).status_code == 201
    acme.jobs.cancel(first.json()["id"])  # its fits no longer wait
    assert job_plane.call("POST", "/v1/jobs", content=body).status_code == 201
    with acme.catalog.session() as session:
        set_tenant_quotas(session, "acme", max_pending_fits=None, max_job_row_steps=11)
    too_big = job_plane.call("POST", "/v1/jobs", content=body)
    assert too_big.status_code == 413, too_big.text
    assert "12 rows x steps" in too_big.json()["error"]["message"]
    assert [j["status"] for j in job_plane.call("GET", "/v1/jobs").json()["items"]] == [
        "pending",
        "cancelled",
    ]
