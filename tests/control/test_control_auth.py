"""Keys at the control plane: one 401 for every bad key, 403 for a missing scope, keys managed over
HTTP shown once and refused from the request after their revocation."""

from __future__ import annotations

import pytest

from tests.control.conftest import Plane


def test_missing_malformed_unknown_and_revoked_keys_get_the_same_401(plane: Plane) -> None:
    revoked = plane.clients["acme"].keys.create("gone")
    plane.clients["acme"].keys.revoke(revoked.id)
    good = plane.keys["acme"]["all"]
    forged = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
    answers = [
        plane.http.get("/v1/adapters"),
        plane.http.get("/v1/adapters", headers={"Authorization": "Basic abc"}),
        plane.http.get("/v1/adapters", headers={"Authorization": "Bearer nonsense"}),
        plane.http.get("/v1/adapters", headers={"Authorization": f"Bearer {forged}"}),
        plane.http.get("/v1/adapters", headers={"Authorization": f"Bearer {revoked.key}"}),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert len({a.text for a in answers}) == 1
    assert all(a.headers["www-authenticate"] == "Bearer" for a in answers)
    assert forged not in answers[3].text and revoked.key not in answers[4].text


@pytest.mark.parametrize(
    ("scope", "method", "url", "allowed"),
    [
        ("read", "GET", "/v1/adapters", True),
        ("read", "GET", "/v1/jobs", True),
        ("read", "POST", "/v1/files", False),
        ("read", "PUT", "/v1/aliases/prod", False),
        ("train", "GET", "/v1/adapters", False),
        ("train", "POST", "/v1/files", True),
        ("train", "DELETE", "/v1/adapters/user-1:1", False),
        ("train", "GET", "/v1/keys", False),
        ("admin", "GET", "/v1/keys", True),
        ("admin", "POST", "/v1/jobs", False),
    ],
)
def test_each_route_needs_its_scope(plane: Plane, scope: str, method: str, url: str, allowed: bool) -> None:
    body = {"target": "user-1:1"} if method == "PUT" else None
    content = b'{"input": "a", "target": "b"}\n' if url == "/v1/files" else None
    answer = plane.call(method, url, scope=scope, json=body, content=content)
    if allowed:
        assert answer.status_code < 400, answer.text
    else:
        assert answer.status_code == 403 and "scope" in answer.json()["error"]["message"]


def test_keys_over_http_are_shown_once_scoped_and_revocable(plane: Plane) -> None:
    made = plane.call("POST", "/v1/keys", json={"name": "ci", "scopes": ["read"]})
    assert made.status_code == 201 and made.json()["scopes"] == ["read"]
    new_key, new_id = made.json()["key"], made.json()["id"]
    listed = plane.call("GET", "/v1/keys")
    assert new_id in [k["id"] for k in listed.json()["items"]] and new_key not in listed.text
    assert "key_hash" not in listed.text
    as_new = {"Authorization": f"Bearer {new_key}"}
    assert plane.http.get("/v1/adapters", headers=as_new).status_code == 200
    assert plane.http.post("/v1/files", headers=as_new, content=b"{}").status_code == 403
    assert plane.call("DELETE", f"/v1/keys/{new_id}", tenant="globex").status_code == 404
    assert plane.call("DELETE", f"/v1/keys/{new_id}").json()["revoked"] is True
    assert plane.http.get("/v1/adapters", headers=as_new).status_code == 401
    unknown = plane.call("POST", "/v1/keys", json={"scopes": ["root"]})
    assert unknown.status_code == 400 and "unknown scope" in unknown.json()["error"]["message"]
