"""Uploads a tenant can afford and the service too: memory that does not grow with the file (the
body streams to a temporary file, is checked a line at a time and streams to the store), limits on
a tenant's files and bytes, and a listing that reaches every file, page by page."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.control.conftest import Plane
from tests.http_server import serving
from ulpt_serving.limits import TenantLimits

MiB = 1 << 20
ROW = (
    json.dumps({"input": "The room was spotless and the staff kind. " * 4, "target": "yes"}) + "\n"
).encode()


def rows_of(size: int, chunk: int = 64 << 10) -> Iterator[bytes]:
    """About `size` bytes of JSON lines, sent in `chunk`-byte pieces as a client's socket would."""
    per_chunk = max(1, chunk // len(ROW))
    for _ in range(max(1, size // (per_chunk * len(ROW)))):
        yield ROW * per_chunk


@pytest.mark.parametrize("size", [1 * MiB, 4 * MiB, 16 * MiB])
def test_an_upload_costs_memory_that_does_not_grow_with_it(plane: Plane, size: int) -> None:
    headers = {"Authorization": f"Bearer {plane.keys['acme']['all']}"}
    with serving(plane.http.app) as url:  # real HTTP: the body arrives in socket-sized chunks
        tracemalloc.start()
        try:
            made = httpx.post(f"{url}/v1/files", content=rows_of(size), headers=headers, timeout=120)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert made.status_code == 201, made.text
    assert made.json()["bytes"] >= size * 0.9 and made.json()["rows"] == made.json()["bytes"] // len(ROW)
    assert peak < 6 * MiB, f"{peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB upload"  # was 98 MiB for 16 MiB


@pytest.mark.parametrize("most", [1, 3])
def test_a_tenant_keeps_at_most_max_files(make_plane: Callable[..., Plane], most: int) -> None:
    plane = make_plane(limits=TenantLimits(max_files=most))
    made = [plane.call("POST", "/v1/files", content=ROW) for _ in range(most)]
    assert [m.status_code for m in made] == [201] * most
    refused = plane.call("POST", "/v1/files", content=ROW)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "insufficient_quota", (
        refused.text
    )
    assert plane.call("POST", "/v1/files", tenant="globex", content=ROW).status_code == 201  # its own
    plane.call("DELETE", f"/v1/files/{made[0].json()['id']}")
    assert plane.call("POST", "/v1/files", content=ROW).status_code == 201


@pytest.mark.parametrize("files", [1, 4])
def test_a_tenant_keeps_at_most_max_file_bytes(make_plane: Callable[..., Plane], files: int) -> None:
    plane = make_plane(limits=TenantLimits(max_file_bytes=files * len(ROW) * 10))
    for _ in range(files):
        assert plane.call("POST", "/v1/files", content=ROW * 10).status_code == 201
    refused = plane.call("POST", "/v1/files", content=ROW)
    assert refused.status_code == 429 and "past" in refused.json()["error"]["message"], refused.text


@pytest.mark.parametrize(("total", "page"), [(1, 1), (7, 3), (6, 3), (5, 10)])
def test_the_listing_reaches_every_file_page_by_page(plane: Plane, total: int, page: int) -> None:
    made = {plane.call("POST", "/v1/files", content=ROW).json()["id"] for _ in range(total)}
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": page, **({"after": after} if after else {})}
        listed = plane.call("GET", "/v1/files", params=params).json()
        seen += [f["id"] for f in listed["data"]]
        if not listed["has_more"]:
            break
        after = listed["last_id"]
    assert sorted(seen) == sorted(made) and len(seen) == total


def test_another_tenants_file_id_is_no_cursor(plane: Plane) -> None:
    theirs = plane.call("POST", "/v1/files", tenant="globex", content=ROW).json()["id"]
    assert plane.call("GET", "/v1/files", params={"after": theirs}).status_code == 404


@pytest.mark.parametrize("rows", [1, 7, 1000, 40_000])  # 40,000 rows: the file part spans many chunks
@pytest.mark.parametrize("purpose", ["data", "fine-tune"])
def test_a_multipart_form_arrives_whole(plane: Plane, rows: int, purpose: str) -> None:
    row = {"prompt": "two plus two is", "completion": " four"}
    data = "".join(json.dumps({**row, "n": i}) + "\n" for i in range(rows)).encode()
    made = plane.call("POST", "/v1/files", files={"file": ("sums.jsonl", data)}, data={"purpose": purpose})
    assert made.status_code == 201, made.text
    shown = made.json()
    assert (shown["filename"], shown["purpose"], shown["rows"], shown["bytes"]) == (
        "sums.jsonl",
        purpose,
        rows,
        len(data),
    )
    assert plane.call("GET", f"/v1/files/{shown['id']}/content").content == data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndata\r\n--xyz--\r\n',
            "no file part",
        ),
        (b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + ROW, "ends before its closing"),
        (b"no boundary here at all", "ends before its closing"),
    ],
)
def test_a_broken_multipart_form_is_a_400(plane: Plane, body: bytes, message: str) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    refused = plane.call("POST", "/v1/files", content=body, headers=headers)
    assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text


def test_a_multipart_upload_costs_memory_that_does_not_grow_with_it(plane: Plane) -> None:
    headers = {
        "Authorization": f"Bearer {plane.keys['acme']['all']}",
        "Content-Type": "multipart/form-data; boundary=b0undary",
    }

    def form() -> Iterator[bytes]:
        yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        yield from rows_of(16 * MiB)
        yield b"\r\n--b0undary--\r\n"

    with serving(plane.http.app) as url:
        tracemalloc.start()
        try:
            made = httpx.post(f"{url}/v1/files", content=form(), headers=headers, timeout=120)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert made.status_code == 201 and made.json()["bytes"] > 15 * MiB, made.text
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB"
