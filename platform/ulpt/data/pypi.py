"""Fetch one release file from a Python package index, checked against a pinned SHA-256.

Used only where a person asked for BIG-bench (`ulpt data bigbench`, a benchmark's `--fetch-bigbench`),
never on a server's request path. Messages never show a URL's credentials (`redact_url`).
`pip download` cannot be used for it: pip builds an sdist's metadata even with `--no-deps`, and since
pip 26.3 refuses any PyPI distribution whose metadata names a direct URL dependency, which bigbench's
does. Reading the index ourselves needs no build at all; the pinned hash makes the file's bytes, not
the index, the authority.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import sys
import urllib.request
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ulpt.config import atomic_writer
from ulpt.errors import DataError, redact_url

DEFAULT_INDEX = "https://pypi.org/simple"
JSON_SIMPLE = "application/vnd.pypi.simple.v1+json"
CHUNK = 1 << 20
_ANCHOR = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"[^>]*>([^<]*)</a>", re.IGNORECASE)


def index_url() -> str:
    """The index pip would use first: $PIP_INDEX_URL, else PyPI."""
    configured = os.environ.get("PIP_INDEX_URL", "").split()
    return (configured[0] if configured else DEFAULT_INDEX).rstrip("/")


def _open(url: str, accept: str | None = None, timeout: float = 180.0):  # noqa: ANN202
    if urlsplit(url).scheme not in ("https", "http", "file"):
        raise DataError(f"refusing to fetch {redact_url(url)!r}: not an http(s) or file URL")
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    try:
        return urllib.request.urlopen(request, timeout=timeout, context=context)
    except OSError as exc:
        raise DataError(f"cannot fetch {redact_url(url)}: {exc}") from None


def file_url(project: str, filename: str, index: str | None = None) -> str:
    """The download URL of `filename` in the index's page for `project` (PEP 691 JSON or PEP 503 HTML)."""
    page = f"{index or index_url()}/{project}/"
    with _open(page, accept=f"{JSON_SIMPLE}, text/html;q=0.1") as answer:
        kind = answer.headers.get("Content-Type", "")
        body = answer.read().decode("utf-8", errors="replace")
    if "json" in kind:
        links = [(f["url"], f["filename"]) for f in json.loads(body).get("files", [])]
    else:
        links = [(unescape(href), unescape(text).strip()) for href, text in _ANCHOR.findall(body)]
    for url, name in links:
        if name == filename:
            return urljoin(page, url)
    raise DataError(f"{filename} is not listed at {redact_url(page)}")


def download(project: str, filename: str, sha256: str, dest: Path, index: str | None = None) -> Path:
    """Download `filename` of `project` to `dest` atomically; refuse bytes whose SHA-256 differs."""
    return fetch_url(file_url(project, filename, index), dest, sha256)


def fetch_url(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest` atomically, with progress; with `sha256`, refuse bytes that differ
    (without it the caller checks what it reads, as the BIG-bench loader checks each task file)."""
    filename = dest.name
    digest = hashlib.sha256()
    with atomic_writer(dest) as out, _open(url) as answer:
        total = int(answer.headers.get("Content-Length") or 0)
        done, reported = 0, 0
        while chunk := answer.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if total and done * 10 // total > reported:
                reported = done * 10 // total
                print(f"  {filename}: {done >> 20} of {total >> 20} MB", file=sys.stderr, flush=True)
        if sha256 is not None and digest.hexdigest() != sha256:
            where = redact_url(url)
            raise DataError(
                f"{filename} from {where} has SHA-256 {digest.hexdigest()}, expected {sha256}: refused"
            )
    return dest
