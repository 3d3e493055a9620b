"""Known-vulnerability audit of the installed dependencies, through whatever PyPI service answers here.

    python benchmarks/audit.py                     # every distribution installed next to this Python
    python benchmarks/audit.py -r requirements.txt # a pinned set (name==version lines)
    python benchmarks/audit.py --strict            # also fail when a package could not be audited

For each `name==version` it asks PyPI's per-release JSON (`/pypi/NAME/VERSION/json`, the data pip-audit's
`pypi` service reads), whose `vulnerabilities` list is that exact release's. Where that endpoint is
unavailable (404 for every release behind some proxies) it falls back to the project JSON
(`/pypi/NAME/json`), whose `vulnerabilities` cover only the LATEST release: a package installed at its
latest release is audited that way; any other is reported "not audited", never counted as clean.

Exit status: 1 when a known (not withdrawn) vulnerability affects an installed release; 0 otherwise,
even when packages could not be audited or PyPI could not be reached (a loud warning says how many),
so that a network hiccup does not fail CI; `--strict` makes those exit 2. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

PYPI = "https://pypi.org"
OWN_PROJECTS = {"ulpt"}
"""Built from this repository, not downloaded: nothing to look up."""


@dataclass
class Result:
    name: str
    version: str
    status: str
    """"vulnerable", "clean", "not audited" or "unreachable"."""
    how: str = ""
    vulnerabilities: list[dict[str, Any]] = field(default_factory=list)


class Unreachable(Exception):
    """PyPI did not answer (network error, timeout, 5xx, 429) after the retries."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> list[tuple[str, str]]:
    """(name, version) of every distribution this interpreter sees, once each."""
    found = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    return sorted(found.items())


def pinned(path: str) -> list[tuple[str, str]]:
    """`name==version` lines of a requirements file, hashed locks included (`--hash` options and line
    continuations are read over; other options and unpinned lines are refused)."""
    out = []
    text = open(path, encoding="utf-8").read().replace("\\\n", " ")
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"\s--hash=\S+", "", " " + raw.split("#", 1)[0]).strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)(\s*;.*)?", line)
        if match is None:
            sys.exit(f"{path}:{number}: not a name==version pin: {raw!r}")
        out.append((normalize(match.group(1)), match.group(3)))
    return out


def fetch(url: str, timeout: float, attempts: int = 3) -> dict[str, Any] | None:
    """The JSON at `url`, None on 404; raises Unreachable when PyPI does not answer."""
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            error: Exception = exc
            if exc.code < 500 and exc.code != 429:
                raise Unreachable(f"{url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            error = exc
        if attempt + 1 < attempts:
            time.sleep(2**attempt)
    raise Unreachable(f"{url}: {error}")


def live(vulnerabilities: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [v for v in vulnerabilities or [] if not v.get("withdrawn")]


def audit_one(name: str, version: str, base: str, timeout: float, attempts: int = 3) -> Result:
    if name in OWN_PROJECTS:
        return Result(name, version, "not audited", "built from this repository, not published")
    public = version.split("+", 1)[0]  # a local build (torch 2.13.0+cpu) is audited as its release
    try:
        exact = fetch(f"{base}/pypi/{name}/{public}/json", timeout, attempts)
        if exact is not None:
            found = live(exact.get("vulnerabilities"))
            return Result(name, version, "vulnerable" if found else "clean", "release JSON", found)
        project = fetch(f"{base}/pypi/{name}/json", timeout, attempts)
    except Unreachable as exc:
        return Result(name, version, "unreachable", str(exc))
    if project is None:
        return Result(name, version, "not audited", "not on PyPI")
    latest = str(project.get("info", {}).get("version"))
    files = project.get("releases", {}).get(public)
    if files is None:
        return Result(name, version, "not audited", f"release {public} not on PyPI (latest {latest})")
    yanked = " (this release is YANKED)" if files and all(f.get("yanked") for f in files) else ""
    if public != latest:
        return Result(
            name,
            version,
            "not audited",
            f"PyPI here reports vulnerabilities of the latest release only ({latest}){yanked}",
        )
    found = live(project.get("vulnerabilities"))
    return Result(name, version, "vulnerable" if found else "clean", "latest-release JSON" + yanked, found)


def audit(packages: list[tuple[str, str]], base: str, timeout: float, attempts: int = 3) -> list[Result]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda p: audit_one(p[0], p[1], base, timeout, attempts), packages))


def report(results: list[Result]) -> str:
    lines = []
    for r in (r for r in results if r.status == "vulnerable"):
        for v in r.vulnerabilities:
            fixed = ", ".join(v.get("fixed_in") or []) or "no fixed release"
            aliases = ", ".join(v.get("aliases") or [])
            lines.append(f"VULNERABLE {r.name} {r.version}: {v.get('id')} ({aliases}); fixed in {fixed}")
            lines.append(f"    {(v.get('summary') or v.get('details') or '').strip().splitlines()[0][:200]}")
    for status in ("not audited", "unreachable"):
        for r in (r for r in results if r.status == status):
            lines.append(f"{status.upper()} {r.name} {r.version}: {r.how}")
    counts = Counter(r.status for r in results)
    audited = counts["clean"] + counts["vulnerable"]
    how = Counter(r.how.split(" (")[0] for r in results if r.status in ("clean", "vulnerable"))
    sources = ", ".join(f"{source}: {n}" for source, n in sorted(how.items())) or "none"
    lines.append(
        f"audited {audited} of {len(results)} packages ({counts['vulnerable']} vulnerable, {counts['clean']} "
        f"with no known vulnerability; by {sources}); "
        f"{counts['not audited']} not audited, {counts['unreachable']} unreachable"
    )
    if counts["unreachable"]:
        lines.append(
            f"WARNING: PyPI did not answer for {counts['unreachable']} package(s): they were NOT audited "
            "(a network problem, not a finding)"
        )
    if counts["not audited"]:
        lines.append(
            f"WARNING: {counts['not audited']} package(s) were NOT audited (reasons above); "
            "no known vulnerability was looked up for them"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--requirements", help="audit name==version pins from this file")
    parser.add_argument("--strict", action="store_true", help="exit 2 when any package was not audited")
    parser.add_argument("--index-url", default=PYPI, help="PyPI's base URL (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per request")
    parser.add_argument("--attempts", type=int, default=3, help="tries per request before 'unreachable'")
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    args = parser.parse_args(argv)
    packages = pinned(args.requirements) if args.requirements else installed()
    results = audit(packages, args.index_url.rstrip("/"), args.timeout, max(1, args.attempts))
    print(report(results))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as out:
            json.dump([r.__dict__ for r in results], out, indent=2)
    if any(r.status == "vulnerable" for r in results):
        return 1
    return 2 if args.strict and any(r.status not in ("clean", "vulnerable") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
