"""A hostile tenant against the control plane: small bodies that would cost the service gigabytes or a
500, and error bodies that must stay short and in the documented `{"error": ...}` shape."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import Plane, make_adapter
from tests.test_documents import alias_bomb
from ulpt.documents import MAX_DEPTH
from ulpt.errors import MAX_MESSAGE_CHARS, SpecError
from ulpt.jobspec import MAX_FITS_PER_WORKER, MAX_ROWS_PER_FORWARD, JobSpec
from ulpt.training.config import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_EVAL_ROWS, MAX_STEPS
from ulpt_control.finetune import FineTuneRequest, job_spec
from ulpt_control.views import job_view


@pytest.mark.parametrize("levels", [3, 7, 8, 9])
def test_an_alias_bomb_in_a_yaml_spec_is_a_short_400(plane: Plane, levels: int) -> None:
    body = f"base_model: smollm2-135m\ntags: [{alias_bomb(levels)}]\n"  # the first tag holds them all
    refused = plane.call("POST", "/v1/jobs", content=body, headers={"Content-Type": "application/yaml"})
    assert refused.status_code == 400, refused.text[:300]
    assert len(refused.content) < MAX_MESSAGE_CHARS + 200  # was 52 MB at 7 levels, 522 MB at 8
    assert plane.call("GET", "/v1/jobs").json()["items"] == []


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
@pytest.mark.parametrize("kind", ["application/json", "application/yaml"])
def test_a_deeply_nested_spec_is_a_400_naming_the_bound(plane: Plane, depth: int, kind: str) -> None:
    nested = "[" * depth + "]" * depth
    body = f'{{"tags": {nested}}}' if kind == "application/json" else f"tags: {nested}\n"
    refused = plane.call("POST", "/v1/jobs", content=body, headers={"Content-Type": kind})
    assert refused.status_code == 400, refused.text[:300]
    assert f"nests deeper than {MAX_DEPTH} levels" in refused.json()["error"]["message"]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_an_upload_with_a_deeply_nested_row_is_a_400(plane: Plane, depth: int) -> None:
    row = '{"input": "x", "target": ' + "[" * depth + "]" * depth + "}\n"
    refused = plane.call("POST", "/v1/files", content=row.encode())
    assert refused.status_code == 400, refused.text[:300]
    assert "line 1 nests deeper" in refused.json()["error"]["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_uploaded_rows_hold_finite_numbers_only(plane: Plane, constant: str) -> None:
    rows = json.dumps({"input": "a", "target": "b"}) + f'\n{{"input": "a", "target": "b", "w": {constant}}}\n'
    refused = plane.call("POST", "/v1/files", content=rows.encode())
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["message"].startswith(f"line 2: {constant} is not a number")


def tampered(cursor: str, value: object) -> str:
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    payload["v"] = value
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


TAMPERED_VALUES: list[object] = [
    [1, 2],
    "2026-01-01T00:00:00+00:00",
    None,
    True,
    {"t": "2026-01-01T00:00:00"},  # a date without a time zone
    {"t": ["2026"]},
    {"x": 1},
    1e308,
    "x" * 40,
]


@pytest.mark.parametrize("sort", ["-created_at", "name", "-version", "metrics.eval_accuracy"])
@pytest.mark.parametrize(
    "value", TAMPERED_VALUES, ids=[type(v).__name__ + str(i) for i, v in enumerate(TAMPERED_VALUES)]
)
def test_a_tampered_cursor_is_a_400_never_a_500(plane: Plane, sort: str, value: object) -> None:
    first = plane.call("GET", "/v1/adapters", params={"sort": sort, "limit": 1})
    cursor = first.json()["next_cursor"]
    assert cursor, first.text
    answer = plane.call(
        "GET", "/v1/adapters", params={"sort": sort, "limit": 1, "cursor": tampered(cursor, value)}
    )
    valid = {  # the values a genuine cursor of each sort can hold
        "-created_at": isinstance(value, dict) and value == {"t": "2026-01-01T00:00:00+00:00"},
        "name": isinstance(value, str),
        "-version": isinstance(value, int) and not isinstance(value, bool),
        "metrics.eval_accuracy": isinstance(value, float),
    }[sort]
    if valid:
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["message"].startswith("invalid cursor")


@pytest.mark.parametrize("creator", ["read", "train", "admin", "all"])
@pytest.mark.parametrize("asked", [["read"], ["train"], ["admin"], ["read", "train", "admin"], None])
def test_a_new_key_holds_at_most_its_creators_scopes(
    plane: Plane, creator: str, asked: list[str] | None
) -> None:
    held = {"read", "train", "admin"} if creator == "all" else {creator}
    body = {"name": "minted"} if asked is None else {"name": "minted", "scopes": asked}
    made = plane.call("POST", "/v1/keys", scope=creator, json=body)
    if "admin" not in held:
        assert made.status_code == 403, made.text
    elif asked is not None and not set(asked) <= held:
        assert made.status_code == 403 and made.json()["error"]["param"] == "scopes", made.text
    else:
        assert made.status_code == 201, made.text
        assert set(made.json()["scopes"]) == (held if asked is None else set(asked))


@pytest.mark.parametrize("path", ["/nope", "/v1/keys/x/y", "/v1/jobs/x/y/z"])
@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH"])
def test_unknown_routes_and_methods_answer_in_the_error_shape(plane: Plane, path: str, method: str) -> None:
    answer = plane.call(method, path)
    assert answer.status_code in (404, 405), answer.text
    assert set(answer.json()) == {"error"} and answer.json()["error"]["message"], answer.text


def test_fine_tuning_without_a_suffix_makes_a_valid_job(tmp_path: Path) -> None:
    request = FineTuneRequest.model_validate({"model": "smollm2-135m", "training_file": "file-abc"})
    spec = job_spec(request, tmp_path / "rows.jsonl")  # the official client omits suffix by default
    assert spec.name.startswith("ft-model-") and "suffix" not in spec.tags


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"method": {"type": "reinforcement", "reinforcement": {}}}, "method.type"),
        ({"validation_file": "file-abc"}, "validation_file"),
        ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": "3"}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 10**12}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"batch_size": True}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": True}}, "hyperparameters.learning_rate_multiplier"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}, "method"),
        ({"seed": True}, "seed"),
    ],
)
def test_fine_tuning_options_it_would_ignore_are_refused(
    plane: Plane, change: dict[str, Any], param: str
) -> None:
    body = {"model": "smollm2-135m", "training_file": "file-abc", **change}
    refused = plane.call("POST", "/v1/fine_tuning/jobs", json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"].startswith(param), refused.text


def test_supervised_method_hyperparameters_are_used(tmp_path: Path) -> None:
    body = {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2, "n_epochs": 3}}}
    request = FineTuneRequest.model_validate({"model": "m", "training_file": "file-abc", "method": body})
    spec = job_spec(request, tmp_path / "rows.jsonl")
    assert (spec.train.batch_size, spec.train.epochs) == (2, 3)


BOUNDS: list[tuple[str, str, int]] = [
    ("train", "steps", MAX_STEPS),
    ("train", "batch_size", MAX_BATCH_SIZE),
    ("train", "eval_every", MAX_STEPS),
    ("train", "warmup_steps", MAX_STEPS),
    ("train", "early_stopping_patience", MAX_STEPS),
    ("train", "max_eval_rows", MAX_EVAL_ROWS),
    ("train", "epochs", MAX_EPOCHS),
    ("", "fits_per_worker", MAX_FITS_PER_WORKER),
    ("", "max_rows_per_forward", MAX_ROWS_PER_FORWARD),
]


@pytest.mark.parametrize(("section", "field", "most"), BOUNDS)
@pytest.mark.parametrize("excess", [0, 1, 10**3, 10**9, 10**12])
def test_spec_sizes_past_their_bound_are_refused_in_one_line(
    section: str, field: str, most: int, excess: int
) -> None:
    base = {"base_model": "smollm2-135m", "dataset": {"path": "file-abc"}}
    data = {**base, section: {field: most + excess}} if section else {**base, field: most + excess}
    where = f"{section}.{field}" if section else field
    if excess == 0:
        assert JobSpec.from_dict(data)
    else:
        with pytest.raises(SpecError, match=rf"^{re.escape(where)} .*less than or equal to {most}"):
            JobSpec.from_dict(data)


@pytest.fixture()
def cluster_plane(make_plane: Callable[..., Plane]) -> Plane:
    return make_plane(max_cpus_per_worker=4, gpu_workers=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cpus_per_worker": 5}, "cpus_per_worker: at most 4"),
        ({"cpus_per_worker": 256}, "cpus_per_worker: at most 4"),
        ({"use_gpu": True}, "use_gpu: this service's cluster has no GPU nodes"),
        ({"train": {"batch_size": 1_000_000_000}}, "train.batch_size"),
        ({"train": {"steps": 10**9}}, "train.steps"),
    ],
)
def test_a_job_no_node_could_run_is_refused_at_submission(
    cluster_plane: Plane, change: dict[str, Any], message: str
) -> None:
    spec = {"base_model": "smollm2-135m", "dataset": {"path": "file-abc"}, **change}
    refused = cluster_plane.call("POST", "/v1/jobs", json=spec)
    assert refused.status_code == 400 and refused.json()["error"]["message"].startswith(message), refused.text
    assert cluster_plane.call("GET", "/v1/jobs").json()["items"] == []


@pytest.mark.parametrize("aliases", [1, 3])
def test_a_public_adapter_shows_other_tenants_nothing_private(plane: Plane, aliases: int) -> None:
    acme = plane.clients["acme"].adapters
    acme.register(make_adapter(20), name="draft", base_model="tiny")  # private
    acme.register(make_adapter(21), name="shared", base_model="tiny", parent="draft:1", public=True)
    for index in range(aliases):
        acme.alias(f"secret-{index}", "shared:1")
    own = plane.call("GET", "/v1/adapters/shared").json()["lineage"]
    assert own["parent"] == "draft:1" and len(own["aliases"]) == aliases
    theirs = plane.call("GET", "/v1/adapters/acme/shared", tenant="globex")
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["lineage"]["aliases"] == [] and theirs.json()["lineage"]["parent"] is None
    for index in range(aliases):  # an alias is the owner's private name: never a reference for others
        refused = plane.call("GET", f"/v1/adapters/acme/secret-{index}", tenant="globex")
        assert refused.status_code == 404, refused.text
        assert plane.call("GET", f"/v1/adapters/secret-{index}").status_code == 200


@pytest.mark.parametrize(
    "text",
    [
        "dataset.path: cannot read /tmp/ulpt-upload-k2j3/file-0123456789abcdef01234567.jsonl: bad line",
        "cannot read '/var/tmp/x/ulpt-upload-abc/file-0123456789abcdef01234567.jsonl'",
        "fits[0].path: /tmp/ulpt-ft-zz91/training.jsonl has no rows",
    ],
)
def test_job_views_name_uploads_by_file_id_and_leave_out_the_host(text: str) -> None:
    job = {"error": text, "timings": {"driver": "host-7:4242", "setup_s": 1.0}, "spec": {"tags": {"x": text}}}
    job["fits"] = [{"key": "a", "worker": "host-7:4243", "error": text}]
    shown = json.dumps(job_view(job))
    assert "ulpt-upload-" not in shown and "ulpt-ft-" not in shown and "host-7" not in shown
    assert ("file-0123456789abcdef01234567" in shown) == ("file-" in text)
