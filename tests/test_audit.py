"""`make audit` fails on a known vulnerability, and never reports an unaudited package as audited.

`benchmarks/audit.py` runs as users run it, against a real HTTP server that answers like PyPI: with
the per-release JSON, or (as behind the proxy of the machine this was written on) with the project
JSON only, whose vulnerabilities are the latest release's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADVISORY = {
    "id": "PYSEC-2099-1",
    "aliases": ["CVE-2099-0001"],
    "summary": "Remote code execution when loading a crafted file",
    "fixed_in": ["2.0"],
    "withdrawn": None,
}
WITHDRAWN = {**ADVISORY, "id": "PYSEC-2099-2", "withdrawn": "2099-02-01T00:00:00Z"}


def _project(latest: str, releases: list[str], vulnerabilities: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"version": latest},
        "releases": {v: [{"yanked": False}] for v in releases},
        "vulnerabilities": vulnerabilities,
    }


PAGES = {
    # per-release JSON answers: the exact release is audited
    "/pypi/exact/1.0/json": {"vulnerabilities": [ADVISORY, WITHDRAWN]},
    "/pypi/exact/2.0/json": {"vulnerabilities": [WITHDRAWN]},
    # per-release JSON missing (404): only the latest release can be audited
    "/pypi/latest-bad/json": _project("3.0", ["2.0", "3.0"], [ADVISORY]),
    "/pypi/latest-ok/json": _project("3.0", ["2.0", "3.0"], []),
    "/pypi/old/json": _project("3.0", ["2.0", "3.0"], []),
}


@pytest.fixture(scope="module")
def fake_pypi() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            page = PAGES.get(self.path)
            body = json.dumps(page).encode() if page is not None else b'{"message": "Not Found"}'
            self.send_response(200 if page is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _audit(tmp_path: Path, index: str, pins: list[str], *flags: str) -> tuple[int, str]:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\n" + "\n".join(pins) + "\n")
    result = subprocess.run(
        [sys.executable, "benchmarks/audit.py", "-r", str(requirements), "--index-url", index, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


def test_a_known_vulnerability_fails_the_audit(fake_pypi: str, tmp_path: Path) -> None:
    code, out = _audit(tmp_path, fake_pypi, ["exact==1.0", "latest-bad==3.0", "latest-ok==3.0"])
    assert code == 1, out
    assert "VULNERABLE exact 1.0: PYSEC-2099-1 (CVE-2099-0001); fixed in 2.0" in out
    assert "VULNERABLE latest-bad 3.0: PYSEC-2099-1" in out
    assert "PYSEC-2099-2" not in out  # withdrawn advisories are not findings
    assert "audited 3 of 3 packages (2 vulnerable, 1 with no known vulnerability" in out


def test_clean_packages_pass(fake_pypi: str, tmp_path: Path) -> None:
    code, out = _audit(tmp_path, fake_pypi, ["exact==2.0", "latest-ok==3.0"], "--strict")
    assert code == 0, out
    summary = "audited 2 of 2 packages (0 vulnerable, 2 with no known vulnerability; "
    summary += "by latest-release JSON: 1, release JSON: 1); 0 not audited, 0 unreachable"
    assert summary in out and "WARNING" not in out


def test_an_older_release_without_its_own_json_is_not_audited(fake_pypi: str, tmp_path: Path) -> None:
    """The project JSON speaks for the latest release only: 2.0 is reported unaudited, not clean."""
    pins = ["old==2.0", "latest-bad==2.0", "missing==1.0"]
    code, out = _audit(tmp_path, fake_pypi, pins)
    assert code == 0, out
    assert "NOT AUDITED old 2.0: PyPI here reports vulnerabilities of the latest release only (3.0)" in out
    assert "NOT AUDITED latest-bad 2.0" in out  # 3.0's advisory says nothing certain about 2.0
    assert "NOT AUDITED missing 1.0: not on PyPI" in out
    assert "audited 0 of 3 packages" in out and "WARNING: 3 package(s) were NOT audited" in out
    assert _audit(tmp_path, fake_pypi, pins, "--strict")[0] == 2


def test_an_unreachable_service_warns_and_fails_only_when_strict(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, out = _audit(tmp_path, closed, ["exact==1.0"], "--attempts", "1", "--timeout", "5")
    assert code == 0, out
    assert "UNREACHABLE exact 1.0" in out and "audited 0 of 1 packages" in out
    assert "WARNING: PyPI did not answer for 1 package(s): they were NOT audited" in out
    assert _audit(tmp_path, closed, ["exact==1.0"], "--attempts", "1", "--strict")[0] == 2


def test_a_requirements_line_that_is_not_a_pin_is_refused(fake_pypi: str, tmp_path: Path) -> None:
    code, out = _audit(tmp_path, fake_pypi, ["exact>=1.0"])
    assert code == 1 and "not a name==version pin: 'exact>=1.0'" in out


def test_a_hashed_lock_is_audited_like_plain_pins(fake_pypi: str, tmp_path: Path) -> None:
    """The repo's locks (uv's --generate-hashes format) can be audited as they are."""
    lock = [
        "exact==1.0 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64,
        "    # via ulpt (pyproject.toml)",
        "latest-ok==3.0 \\\n    --hash=sha256:" + "c" * 64,
    ]
    code, out = _audit(tmp_path, fake_pypi, lock)
    assert code == 1, out
    assert "VULNERABLE exact 1.0: PYSEC-2099-1" in out and "audited 2 of 2 packages" in out
