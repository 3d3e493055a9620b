"""One real local Ray per test session (starting Ray costs ~6-9 s; see DESIGN section 8)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


def ray_env() -> dict[str, str]:
    """Settings for a quiet, offline, token-less local Ray whose socket paths stay short."""
    return {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp"),
    }


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs shared by every test that needs one; shut down at the end."""
    import ray

    os.environ.update(ray_env())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        yield
    finally:
        ray.shutdown()
