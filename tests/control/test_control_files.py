"""Uploads: JSON lines only, checked before they are stored; sizes refused before the body is read;
another tenant's file id answers like a missing one."""

from __future__ import annotations

import json
from collections.abc import Iterator

from tests.control.conftest import Plane

ROWS = b"".join(json.dumps({"text": f"row {i}", "label": "yes"}).encode() + b"\n" for i in range(5))


def test_upload_list_show_read_and_delete(plane: Plane) -> None:
    made = plane.call("POST", "/v1/files", params={"filename": "../../etc/reviews.jsonl"}, content=ROWS)
    assert made.status_code == 201, made.text
    record = made.json()
    assert record["filename"] == "reviews.jsonl" and record["rows"] == 5 and record["bytes"] == len(ROWS)
    assert [f["id"] for f in plane.call("GET", "/v1/files").json()["data"]] == [record["id"]]
    assert plane.call("GET", f"/v1/files/{record['id']}/content").content == ROWS
    assert plane.call("GET", f"/v1/files/{record['id']}", tenant="globex").status_code == 404
    assert plane.call("GET", "/v1/files", tenant="globex").json()["data"] == []
    assert plane.call("DELETE", f"/v1/files/{record['id']}").json()["deleted"] is True
    assert plane.call("GET", f"/v1/files/{record['id']}").status_code == 404


def test_bad_files_are_refused_with_the_line_that_is_wrong(plane: Plane) -> None:
    not_json = plane.call("POST", "/v1/files", content=ROWS + b"oops\n")
    assert not_json.status_code == 400 and "line 6" in not_json.json()["error"]["message"]
    pickle_like = plane.call("POST", "/v1/files", content=b"\x80\x04\x95\x00")
    assert pickle_like.status_code == 400
    chat = plane.call("POST", "/v1/files", params={"purpose": "fine-tune"}, content=ROWS)
    assert chat.status_code == 400 and "completion" in chat.json()["error"]["message"]
    assert plane.call("GET", "/v1/files").json()["data"] == []


def test_oversized_uploads_are_refused_before_and_while_reading(make_plane) -> None:  # type: ignore[no-untyped-def]
    plane = make_plane(max_upload_bytes=1000)

    def chunks() -> Iterator[bytes]:  # no content-length: the limit must hold while streaming
        yield from (b"x" * 100 for _ in range(100))

    declared = plane.call("POST", "/v1/files", content=b"x" * 1001)
    streamed = plane.call("POST", "/v1/files", content=chunks())
    assert declared.status_code == streamed.status_code == 413
    assert plane.call("GET", "/v1/files").json()["data"] == []
