"""Which Ray a job joins when none is named: RAY_ADDRESS, else a cluster `ray start --head` recorded and
that still answers, else none (the job starts a private one)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ulpt.config import running_ray_address


def _record(tmp_path: Path, address: str) -> None:
    folder = tmp_path / "ray"
    folder.mkdir(exist_ok=True)
    (folder / "ray_current_cluster").write_text(address + "\n")


@pytest.fixture()
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    return tmp_path


def test_ray_address_from_the_environment_wins(temp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert running_ray_address() == "10.0.0.5:6379"


def test_a_recorded_cluster_that_answers_is_joined(temp_root: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        _record(temp_root, address)
        assert running_ray_address() == address


def test_no_cluster_or_a_dead_one_means_start_a_private_ray(temp_root: Path) -> None:
    assert running_ray_address() is None  # nothing recorded
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    _record(temp_root, f"127.0.0.1:{port}")  # the cluster died without `ray stop`
    assert running_ray_address() is None
    _record(temp_root, "garbage")
    assert running_ray_address() is None
