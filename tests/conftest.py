"""Shared fixtures: tiny random base models of both families, built from configs (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import ulpt  # noqa: E402
from ulpt.models.tiny import build_tiny_model  # noqa: E402

pytest_plugins = [
    "tests.services",
    "tests.serve_fixtures",
    "tests.ray_fixtures",
    "tests.reliability_fixtures",
]

FAMILIES = ("llama", "t5")

# Tiny models are far faster on one thread, and the suite shares 2 cores with Ray and the servers.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: build_tiny_model(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs: dict[str, Path]) -> dict[str, ulpt.BaseModel]:
    return {family: ulpt.load_base_model(path) for family, path in tiny_model_dirs.items()}


@pytest.fixture(params=FAMILIES)
def tiny_model(request: pytest.FixtureRequest, tiny_models: dict[str, ulpt.BaseModel]) -> ulpt.BaseModel:
    return tiny_models[request.param]


@pytest.fixture()
def ulpt_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ULPT_HOME", str(home))
    return home
