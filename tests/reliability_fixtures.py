"""Reliability suite: each test records the figures it measured for `docs/reliability.md`.

A pytest plugin (listed in `tests/conftest.py`), so any test, in `tests/reliability/` or not, can
ask for the `reliability` fixture.

`make test` runs the fast sizes. `make reliability` sets ULPT_RELIABILITY=full (larger counts,
slow tier included) and ULPT_RELIABILITY_OUT to a folder; every `record()` writes one JSON
file there, and `benchmarks/reliability.py` turns the folder into the document.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class ReliabilityRun:
    full: bool
    out: Path | None

    def size(self, ci: int, full: int) -> int:
        """The count to use: small in `make test`, the issue's figure in `make reliability`."""
        return full if self.full else ci

    def record(self, section: str, figures: dict) -> None:
        """Keep the measured figures of one test (JSON-able values only)."""
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {"section": section, "full": self.full, "figures": figures}
        (self.out / f"{section}.json").write_text(json.dumps(payload, indent=2, sort_keys=True))


@pytest.fixture(scope="session")
def reliability() -> ReliabilityRun:
    """Sizes and a recorder for figures, set by ULPT_RELIABILITY and ULPT_RELIABILITY_OUT."""
    out = os.environ.get("ULPT_RELIABILITY_OUT")
    return ReliabilityRun(full=os.environ.get("ULPT_RELIABILITY") == "full", out=Path(out) if out else None)
