"""`ulpt demo --api`: the demo's path (SmolLM2, generated tasks, a packed Ray job) with training and
catalog reads going through the control plane's HTTP API, holding only a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulpt.config import ulpt_home
from ulpt.demo import SMOKE_FITS, run_demo
from ulpt.sdk import Client


@pytest.fixture()
def demo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home (catalog, store, keys) that reuses the usual home's converted model, which the slow
    tier shares."""
    shared, home = ulpt_home(), tmp_path / "home"
    home.mkdir(parents=True)
    if (shared / "models").is_dir():
        (home / "models").symlink_to((shared / "models").absolute())
    monkeypatch.setenv("ULPT_HOME", str(home))
    return home


@pytest.mark.slow
def test_demo_smoke_through_the_api(demo_home: Path) -> None:
    result = run_demo(smoke=True, api=True, serve=False)
    assert set(result["registered"]) == {fit.name for fit in SMOKE_FITS}
    with Client(home=demo_home) as operator:
        (key,) = operator.keys.list()  # the demo's user held one key, made for it, without admin
        assert key.name == "demo" and key.scopes == ("read", "train")
        job = operator.jobs.get(result["job"]).status()
        assert job.status == "done" and job.counts["done"] == 2 and job.counts["failed"] == 0
