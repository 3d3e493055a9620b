"""Reliability suite: the `reliability` fixture lives in `tests/reliability_fixtures.py` (a plugin of
`tests/conftest.py`), so tests outside this folder (node loss, crash during registration) record too.
"""

from __future__ import annotations

from tests.control.conftest import make_plane, plane
from tests.reliability_fixtures import ReliabilityRun

__all__ = ["ReliabilityRun", "make_plane", "plane"]  # the control plane's fixtures, for its attacks
