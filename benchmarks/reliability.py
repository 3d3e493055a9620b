"""Runs the reliability suite at full size and writes `docs/reliability.md` from what it measured.

    python benchmarks/reliability.py                # pytest -m reliability (slow tier included), then the doc
    python benchmarks/reliability.py --report-only  # the doc again, from the JSON already there
    python benchmarks/reliability.py --update -- tests/test_jobs_slow.py  # rerun some tests, keep the rest

Each test of the suite records its figures as `<out>/<section>.json` (see `tests/reliability_fixtures.py`).
The document has one section per recorded section, with what was tested (the docstring of the test, or
of its module, that recorded it) and a table of the figures. Sections the tests can record but did not
(not selected, failed before recording, cut by the time cap) are listed as not run: nothing is invented.
A run removes the previous JSON first, so figures never outlive the run that measured them. `--update`
runs only the tests selected after `--`: the sections they record replace their old figures, every other
section keeps the last run's, and the document says which sections came from which run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET  # the junit file our own pytest run just wrote
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "reliability"
DOC = REPO / "docs" / "reliability.md"
RUN_FILE = "_run.json"
JUNIT_FILE = "_junit.xml"


# ---- running -----------------------------------------------------------------------------------------


def run_suite(
    out: Path, per_test_s: int, total_s: int, extra: list[str], *, update: bool = False, select: bool = False
) -> dict[str, Any]:
    """pytest over the suite in its own process group, killed whole at the overall cap.

    With `update`, the run writes to a folder of its own and `merge_update` moves its sections over;
    `select`: `extra` names the tests to run, in place of the whole `tests` folder.
    """
    if update:
        partial = out / "_update"
        shutil.rmtree(partial, ignore_errors=True)
        run = run_suite(partial, per_test_s, total_s, extra, select=True)
        merge_update(out, partial, run, extra)
        shutil.rmtree(partial)
        return run
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.json"), out / JUNIT_FILE]:
        old.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pytest", *([] if select else ["tests"]), "-m", "reliability", "-q", "-rfE",
        f"--timeout={per_test_s}", f"--junitxml={out / JUNIT_FILE}", *extra,
    ]  # fmt: skip
    env = dict(os.environ, ULPT_RELIABILITY="full", ULPT_RELIABILITY_OUT=str(out))
    started, stamp = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    print("$ " + " ".join(command), flush=True)
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    capped = False
    try:
        code = proc.wait(timeout=total_s)
    except subprocess.TimeoutExpired:
        capped = True
        print(f"\nreliability: the overall cap of {total_s} s was reached; stopping pytest", flush=True)
        code = _stop(proc)
    run = {
        "started": stamp,
        "seconds": round(time.monotonic() - started, 1),
        "pytest_exit_code": code,
        "capped": capped,
        "per_test_timeout_s": per_test_s,
        "total_cap_s": total_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        **junit_outcome(out / JUNIT_FILE),
    }
    (out / RUN_FILE).write_text(json.dumps(run, indent=2))
    return run


def merge_update(out: Path, partial: Path, run: dict[str, Any], selection: list[str]) -> list[str]:
    """Move a partial run's sections into `out` (replacing theirs) and note the run in `out`'s run record."""
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for path in sorted(partial.glob("*.json")):
        if not path.name.startswith("_"):
            path.replace(out / path.name)
            sections.append(path.stem)
    record_path = out / RUN_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    updates = [u for u in record.get("updates", []) if not set(u["sections"]) <= set(sections)]
    keep = {k: run[k] for k in ("started", "seconds", "pytest_exit_code", "outcome", "failed_tests")}
    record["updates"] = [*updates, {**keep, "selection": selection, "sections": sections}]
    record_path.write_text(json.dumps(record, indent=2))
    return sections


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C first, so pytest tears its fixtures down (PostgreSQL, SeaweedFS, Ray); then the group."""
    for sig, wait_s in ((signal.SIGINT, 120), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        if sig == signal.SIGINT:
            proc.send_signal(sig)
        else:  # the process group this script started: pytest and whatever it spawned
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def junit_outcome(path: Path) -> dict[str, Any]:
    """Counts and failed test ids from pytest's junit file (absent when pytest was killed)."""
    if not path.exists():
        return {"outcome": None, "failed_tests": []}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in ET.parse(path).iter("testcase"):
        if not case.get("name"):  # the test a Ctrl-C interrupted: neither passed nor failed
            continue
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
            failed.append(test_id)
        elif "error" in kinds:
            counts["errors"] += 1
            failed.append(test_id)
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {"outcome": counts, "failed_tests": failed}


# ---- what the tests can record -------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Sections one `record(...)` call writes: an exact name, or a prefix when the name is built."""

    name: str
    grouped: bool
    about: str
    source: str

    def matches(self, section: str) -> bool:
        return section.startswith(self.name) if self.grouped else section == self.name


def recorders(tests: Path = REPO / "tests") -> list[Family]:
    """Every `<x>.record(<section>, ...)` in the tests, with the docstring that says what it tests."""
    families: dict[str, Family] = {}
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module_doc = _first_paragraph(ast.get_docstring(tree))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for function in functions:
            is_test = function.name.startswith("test_")  # a helper's docstring says how, not what
            own_doc = _first_paragraph(ast.get_docstring(function)) if is_test else ""
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                    continue
                if call.func.attr != "record" or not call.args:
                    continue
                prefix, grouped = _literal_prefix(_assigned(function, call.args[0]))
                if prefix and prefix not in families:
                    where = path.relative_to(tests.parent)
                    source = f"{where}::{function.name}" if is_test else str(where)
                    families[prefix] = Family(prefix, grouped, own_doc or module_doc, source)
    return sorted(families.values(), key=lambda f: f.source)


def _assigned(function: ast.AST, node: ast.expr) -> ast.expr:
    """A section name held in a variable: the value the function assigned to it."""
    if isinstance(node, ast.Name):
        for stmt in ast.walk(function):
            if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets
            ):
                return stmt.value
    return node


def _literal_prefix(node: ast.expr) -> tuple[str, bool]:
    """("name", False) for a constant; (its constant start, True) for an f-string or a + concatenation."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, False
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value), True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        prefix, _ = _literal_prefix(node.left)
        return prefix, True
    return "", False


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


# ---- the document --------------------------------------------------------------------------------------


def load_sections(out: Path) -> dict[str, dict[str, Any]]:
    sections = {}
    for path in sorted(out.glob("*.json")):
        if path.name.startswith("_"):
            continue
        payload = json.loads(path.read_text())
        sections[str(payload.get("section", path.stem))] = payload
    return sections


def render(out: Path, families: list[Family]) -> str:
    sections = load_sections(out)
    run_path = out / RUN_FILE
    run = json.loads(run_path.read_text()) if run_path.exists() else None
    lines = [
        "# Reliability",
        "",
        "Generated by `make reliability` (`benchmarks/reliability.py`) from the figures the tests of the",
        "reliability suite recorded in `benchmarks/results/reliability/`; `--report-only` re-renders it.",
        "Every figure below was measured by the test named with it; a section without figures says so.",
        "",
        *_run_lines(run),
    ]
    owner = {name: _owner(name, families) for name in sections}
    for family in families:
        found = {name: payload for name, payload in sections.items() if owner[name] is family}
        lines += ["", f"## {_title(family.name)}", ""]
        if family.about:
            lines += [family.about, ""]
        lines.append(f"Test: `{family.source}`.")
        lines.append("")
        if not found:
            lines.append("**Not run**: no figures were recorded for this section.")
        else:
            lines += _table(found, family)
    unknown = {name: payload for name, payload in sections.items() if owner[name] is None}
    for name, payload in unknown.items():
        lines += ["", f"## {_title(name)}", "", "Recorded by a test this renderer could not locate.", ""]
        lines += _table({name: payload}, Family(name, False, "", ""))
    return "\n".join(lines) + "\n"


def _owner(section: str, families: list[Family]) -> Family | None:
    """The family that recorded `section`: its exact name, else the longest prefix that fits."""
    exact = [f for f in families if not f.grouped and f.name == section]
    prefixes = sorted((f for f in families if f.grouped and f.matches(section)), key=lambda f: -len(f.name))
    return (exact + prefixes + [None])[0]


def _run_lines(run: dict[str, Any] | None) -> list[str]:
    if run is None or "started" not in run:
        lines = ["No run record (`_run.json`): the figures come from tests run outside `make reliability`."]
        return lines + _update_lines(run or {})
    outcome = run.get("outcome") or {}
    lines = [
        f"Last run: {run['started']}, {run['seconds']:.0f} s on {run['machine']}; pytest exit code "
        f"{run['pytest_exit_code']}"
        + (f", {', '.join(f'{n} {k}' for k, n in outcome.items())}" if outcome else ", no junit report")
        + f" (per-test timeout {run['per_test_timeout_s']} s, overall cap {run['total_cap_s']} s).",
    ]
    if run.get("capped"):
        lines += ["", "**The run hit its overall cap**: tests after that point did not run."]
    if run.get("failed_tests"):
        lines += ["", "Failed: " + ", ".join(f"`{test}`" for test in run["failed_tests"]) + "."]
    return lines + _update_lines(run)


def _update_lines(run: dict[str, Any]) -> list[str]:
    """One line per later `--update` run: what it ran, how it ended, which sections it replaced."""
    lines = []
    for update in run.get("updates", []):
        outcome = update.get("outcome") or {}
        lines += [
            "",
            f"Updated {update['started']} by `--update -- {' '.join(update['selection'])}` "
            f"({update['seconds']:.0f} s; pytest exit code {update['pytest_exit_code']}"
            + (f", {', '.join(f'{n} {k}' for k, n in outcome.items())}" if outcome else "")
            + "): "
            + (", ".join(f"`{name}`" for name in update["sections"]) or "no section recorded")
            + ".",
        ]
        if update.get("failed_tests"):
            lines.append("Failed: " + ", ".join(f"`{test}`" for test in update["failed_tests"]) + ".")
    return lines


def _table(found: dict[str, dict[str, Any]], family: Family) -> list[str]:
    if not family.grouped:
        ((name, payload),) = found.items()
        rows = [["figure", "value"]] + [[k, _cell(v)] for k, v in payload.get("figures", {}).items()]
        return _markdown(rows) + ["", _size_note(found)]
    columns: list[str] = []
    for payload in found.values():
        columns += [k for k in payload.get("figures", {}) if k not in columns]
    rows = [["section", *columns]]
    for name, payload in found.items():
        figures = payload.get("figures", {})
        rows.append([name.removeprefix(family.name) or name, *(_cell(figures.get(c, "")) for c in columns)])
    return _markdown(rows) + ["", _size_note(found)]


def _size_note(found: dict[str, dict[str, Any]]) -> str:
    full = [bool(p.get("full")) for p in found.values()]
    if all(full):
        return "Sizes: full run (`ULPT_RELIABILITY=full`)."
    if not any(full):
        return "Sizes: the fast tier's (`make test`), not the full run's."
    return "Sizes: mixed: some rows from a full run, some at the fast tier's sizes."


def _markdown(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


ACRONYMS = {"sdk": "SDK", "http": "HTTP", "s3": "S3", "gc": "GC"}


def _title(name: str) -> str:
    words = [ACRONYMS.get(w, w) for w in re.split(r"[_\s]+", name.strip("_ "))]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report-only", action="store_true", help="only re-render the document")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the JSON figures")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document to write")
    parser.add_argument("--per-test-timeout", type=int, default=1200, help="seconds (pytest-timeout)")
    parser.add_argument("--total-timeout", type=int, default=3600, help="seconds for the whole run")
    parser.add_argument(
        "--update",
        action="store_true",
        help="run only the tests selected after --; replace their sections, keep the others",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    code = 0
    if not args.report_only:
        if args.update and not args.pytest_args:
            parser.error("--update needs the tests to run after --, e.g. -- tests/test_jobs_slow.py")
        run = run_suite(
            args.out, args.per_test_timeout, args.total_timeout, args.pytest_args, update=args.update
        )
        code = 1 if run["capped"] else int(run["pytest_exit_code"])
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(render(args.out, recorders()))
    print(f"wrote {args.doc.relative_to(REPO) if args.doc.is_relative_to(REPO) else args.doc}")
    return code


if __name__ == "__main__":
    sys.exit(main())
