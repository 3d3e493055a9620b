"""`benchmarks/reliability.py` renders only what tests recorded, and lists the rest as not run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

RECORDING_TESTS = '''"""Things survive. More detail that the document leaves out.

Second paragraph.
"""


def test_alpha(reliability):
    """Alpha is measured."""
    reliability.record("alpha", {"count": 1200, "ratio": 0.5})


def test_beta(reliability, stack):
    reliability.record(f"beta_{stack}", {"stack": stack})


def test_gamma(reliability):
    section = "gamma_" + "x"
    reliability.record(section, {"n": 1})
'''


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "reliability_runner", ROOT / "benchmarks" / "reliability.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _recorded(out: Path, section: str, figures: dict, *, full: bool = True) -> None:
    payload = {"section": section, "full": full, "figures": figures}
    (out / f"{section}.json").write_text(json.dumps(payload))


def test_sections_render_from_json_and_missing_ones_are_not_run(tmp_path: Path) -> None:
    runner = _runner()
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_things.py").write_text(RECORDING_TESTS)
    out = tmp_path / "out"
    out.mkdir()
    _recorded(out, "alpha", {"count": 1200, "ratio": 0.5})
    _recorded(out, "beta_one", {"stack": "one"}, full=False)
    _recorded(out, "beta_two", {"stack": "two|pipe"}, full=False)
    _recorded(out, "stray", {"n": 3})

    families = runner.recorders(tests)
    assert [(f.name, f.grouped) for f in families] == [("alpha", False), ("beta_", True), ("gamma_", True)]
    doc = runner.render(out, families)

    alpha = doc[doc.index("## Alpha") : doc.index("## Beta")]
    assert "Alpha is measured." in alpha and "Test: `tests/test_things.py::test_alpha`." in alpha
    assert "| count | 1,200 |" in alpha and "| ratio | 0.5 |" in alpha and "full run" in alpha
    beta = doc[doc.index("## Beta") : doc.index("## Gamma")]
    assert "Things survive. More detail that the document leaves out." in beta  # the module's first paragraph
    assert "| one | one |" in beta and "| two | two\\|pipe |" in beta and "fast tier" in beta
    gamma = doc[doc.index("## Gamma") : doc.index("## Stray")]
    assert "**Not run**" in gamma and "|" not in gamma  # nothing recorded, nothing invented
    assert "could not locate" in doc[doc.index("## Stray") :]
    assert "No run record" in doc


def test_report_only_renders_the_repository_suite(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/reliability.py",
            "--report-only",
            "--out",
            str(tmp_path),
            "--doc",
            str(doc),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = doc.read_text()
    for title in ("## Node loss training", "## Registration crash", "## SDK corruption", "## No unpickling"):
        assert title in text
    assert "|" not in text and text.count("**Not run**") >= 4  # an empty folder: every section not run


def test_an_update_replaces_only_the_sections_it_recorded_and_says_so(tmp_path: Path) -> None:
    runner = _runner()
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_things.py").write_text(RECORDING_TESTS)
    out, partial = tmp_path / "out", tmp_path / "partial"
    out.mkdir()
    partial.mkdir()
    _recorded(out, "alpha", {"count": 1})
    _recorded(out, "beta_one", {"stack": "old"})
    first = {"started": "2026-01-01T00:00:00+00:00", "seconds": 60.0, "pytest_exit_code": 0}
    first |= {"capped": False, "per_test_timeout_s": 1, "total_cap_s": 2, "machine": "m"}
    (out / runner.RUN_FILE).write_text(json.dumps({**first, "outcome": {"passed": 2}}))
    _recorded(partial, "beta_one", {"stack": "new"})
    run = {**first, "started": "2026-02-02T00:00:00+00:00", "pytest_exit_code": 1}
    run |= {"outcome": {"passed": 0, "failed": 1}, "failed_tests": ["t::x"]}

    assert runner.merge_update(out, partial, run, ["tests/test_things.py"]) == ["beta_one"]
    doc = runner.render(out, runner.recorders(tests))
    assert "| count | 1 |" in doc  # kept from the full run
    assert "| one | new |" in doc and "old" not in doc  # replaced by the update
    assert "Last run: 2026-01-01T00:00:00+00:00" in doc
    assert "Updated 2026-02-02T00:00:00+00:00 by `--update -- tests/test_things.py`" in doc
    assert "pytest exit code 1, 0 passed, 1 failed): `beta_one`." in doc and "Failed: `t::x`." in doc
