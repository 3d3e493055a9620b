"""The catalog over HTTP as one tenant: find with filters, sort and cursor; show with lineage; alias
promote and rollback; delete; download in our format and as PEFT; another tenant's adapters answer
exactly like missing ones."""

from __future__ import annotations

import io
import zipfile

import ulpt
from tests.control.conftest import Plane


def test_find_filters_sorts_and_pages_only_the_callers_adapters(plane: Plane) -> None:
    first = plane.call("GET", "/v1/adapters", params={"sort": "-metrics.eval_accuracy", "limit": 2}).json()
    assert [a["ref"] for a in first["items"]] == ["user-2:1", "user-1:2"]
    rest = plane.call(
        "GET", "/v1/adapters", params={"sort": "-metrics.eval_accuracy", "cursor": first["next_cursor"]}
    )
    assert [a["ref"] for a in rest.json()["items"]] == ["user-1:1"]
    good = plane.call("GET", "/v1/adapters", params={"metric": "eval_accuracy>=0.6", "name": "user-1"}).json()
    assert [a["ref"] for a in good["items"]] == ["user-1:2"]
    assert all(a["tenant"] == "acme" and "blob_key" not in a for a in first["items"])
    theirs = plane.call("GET", "/v1/adapters", tenant="globex").json()["items"]
    assert [a["ref"] for a in theirs] == ["theirs:1"]
    bad = plane.call("GET", "/v1/adapters", params={"metric": "eval_accuracy>>1"})
    assert bad.status_code == 400 and "\n" not in bad.json()["error"]["message"]


def test_show_has_lineage_and_metrics(plane: Plane) -> None:
    shown = plane.call("GET", "/v1/adapters/user-1").json()
    assert shown["ref"] == "user-1:2" and shown["metrics"] == {"eval_accuracy": 0.6}
    assert shown["lineage"]["aliases"] == [] and shown["lineage"]["job"] is None


def test_another_tenants_adapter_reads_exactly_like_a_missing_one(plane: Plane) -> None:
    for method, suffix in (("GET", ""), ("GET", "/download"), ("DELETE", "")):
        foreign = plane.call(method, f"/v1/adapters/user-1:1{suffix}", tenant="globex")
        missing = plane.call(method, f"/v1/adapters/nobody-9:1{suffix}", tenant="globex")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.text.replace("user-1", "X") == missing.text.replace("nobody-9", "X")
    foreign = plane.call("PUT", "/v1/aliases/prod", tenant="globex", json={"target": "user-1:1"})
    missing = plane.call("PUT", "/v1/aliases/prod", tenant="globex", json={"target": "nobody-9:1"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.text.replace("user-1", "X") == missing.text.replace("nobody-9", "X")


def test_promote_rollback_and_delete(plane: Plane) -> None:
    assert plane.call("PUT", "/v1/aliases/prod", json={"target": "user-1:1"}).json()["ref"] == "user-1:1"
    moved = plane.call("PUT", "/v1/aliases/prod", json={"target": "user-1:2"}).json()
    assert moved == {"alias": "prod", "ref": "user-1:2", "previous": "user-1:1"}
    assert plane.call("GET", "/v1/aliases").json()["items"][0]["ref"] == "user-1:2"
    assert plane.call("POST", "/v1/aliases/prod/rollback").json()["ref"] == "user-1:1"
    refused = plane.call("DELETE", "/v1/adapters/user-1:1")
    assert refused.status_code == 409  # an alias points at it
    assert plane.call("DELETE", "/v1/adapters/user-1:1", params={"force": True}).json() == {
        "deleted": ["user-1:1"]
    }
    assert plane.call("GET", "/v1/adapters/prod").status_code == 404


def test_download_in_our_format_and_as_peft(plane: Plane) -> None:
    blob = plane.call("GET", "/v1/adapters/user-2/download")
    assert blob.status_code == 200 and blob.headers["content-type"] == "application/octet-stream"
    expected = plane.clients["acme"].adapters.load("user-2")
    assert ulpt.Adapter.from_bytes(blob.content).to_bytes() == expected.to_bytes()
    peft = plane.call("GET", "/v1/adapters/user-2:1/download", params={"format": "peft"})
    names = zipfile.ZipFile(io.BytesIO(peft.content)).namelist()
    assert "user-2-v1/adapter_config.json" in names
