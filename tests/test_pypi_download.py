"""Fetching a release file from a package index (how the BIG-bench sdist arrives), against a real
HTTP server on 127.0.0.1 that speaks both index formats."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ulpt.data.pypi import download
from ulpt.errors import DataError

PAYLOAD = b"tasks " * 300_000  # ~1.8 MB: several chunks
FILENAME = "pkg-1.0.0.tar.gz"


class Index(BaseHTTPRequestHandler):
    json_pages = True

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/simple/pkg/":
            if self.json_pages and "json" in self.headers.get("Accept", ""):
                files = [{"filename": FILENAME, "url": f"../../files/{FILENAME}", "hashes": {}}]
                body, kind = json.dumps({"files": files}).encode(), "application/vnd.pypi.simple.v1+json"
            else:
                link = f'<a href="/files/{FILENAME}#sha256=x">{FILENAME}</a>'
                body = f"<html><body>{link}</body></html>".encode()
                kind = "text/html"
        elif self.path == f"/files/{FILENAME}":
            body, kind = PAYLOAD, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["json-index", "html-index"])
def index(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (Index,), {"json_pages": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple"
    finally:
        server.shutdown()
        server.server_close()


def test_download_writes_the_file_when_its_hash_matches(index: str, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / FILENAME
    got = download("pkg", FILENAME, hashlib.sha256(PAYLOAD).hexdigest(), dest, index=index)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert list(dest.parent.iterdir()) == [dest]  # no partial file left beside it


def test_download_refuses_bytes_with_another_hash_and_leaves_nothing(index: str, tmp_path: Path) -> None:
    dest = tmp_path / FILENAME
    with pytest.raises(DataError, match="SHA-256 .* expected 0+: refused"):
        download("pkg", FILENAME, "0" * 64, dest, index=index)
    assert list(tmp_path.iterdir()) == []


def test_download_names_a_file_the_index_does_not_list(index: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pkg-2.0.0.tar.gz is not listed at"):
        download("pkg", "pkg-2.0.0.tar.gz", "0" * 64, tmp_path / "x", index=index)
    with pytest.raises(DataError, match="cannot fetch"):
        download("nopkg", FILENAME, "0" * 64, tmp_path / "x", index=index)
