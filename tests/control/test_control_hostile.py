"""A hostile tenant against the control plane: small bodies that would cost the service gigabytes or a
500, and error bodies that must stay short and in the documented `{"error": ...}` shape."""

from __future__ import annotations

import base64
import json

import pytest

from tests.control.conftest import Plane
from tests.test_documents import alias_bomb
from ulpt.documents import MAX_DEPTH
from ulpt.errors import MAX_MESSAGE_CHARS


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
