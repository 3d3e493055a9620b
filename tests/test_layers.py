"""The layers import downward only: core, then jobs and serving, then the SDK, CLI and demo.

`lint-imports` (in `make lint`) checks the static import graph against the contracts in
pyproject.toml; these tests check what a fresh interpreter actually loads, and what the layers
expose to each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ulpt.adapters import METHODS

CORE = [
    "ulpt",
    "ulpt.adapters",
    "ulpt.catalog",
    "ulpt.data",
    "ulpt.models",
    "ulpt.registry",
    "ulpt.store",
    "ulpt.training",
]
ABOVE_THE_CORE = (
    "ulpt.sdk",
    "ulpt.jobs_api",
    "ulpt.cli",
    "ulpt.demo",
    "ulpt_jobs",
    "ulpt_serving",
    "ulpt_control",
)


def _loaded_after(statement: str) -> list[str]:
    """The first-party modules a fresh interpreter has loaded after running `statement`."""
    first_party = "('ulpt', 'ulpt_jobs', 'ulpt_serving', 'ulpt_control')"
    probe = (
        f"{statement}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {first_party})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ), check=True
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_importing_the_core_loads_no_layer_above_it() -> None:
    loaded = _loaded_after("\n".join(f"import {module}" for module in CORE))
    above = [m for m in loaded if m.startswith(ABOVE_THE_CORE)]
    assert above == [], f"the core pulled in {above}"


@pytest.mark.parametrize(
    "layer", ["ulpt_jobs.handle", "ulpt_jobs.worker", "ulpt_serving.app", "ulpt_control.deployment"]
)
def test_jobs_serving_and_control_load_neither_the_sdk_nor_the_cli(layer: str) -> None:
    loaded = _loaded_after(f"import {layer}")
    above = ("ulpt.sdk", "ulpt.jobs_api", "ulpt.cli", "ulpt.demo") + (
        ("ulpt_control",) if not layer.startswith("ulpt_control") else ()
    )
    assert [m for m in loaded if m.startswith(above)] == []


def test_the_sdk_is_still_exported_by_the_package_root() -> None:
    import ulpt
    from ulpt.sdk import Client

    assert ulpt.Client is Client and "Client" in ulpt.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ulpt.Nope  # noqa: B018


@pytest.mark.parametrize("command", [("train", "--help"), ("adapters", "list", "--help")])
def test_cli_method_help_lists_every_method(command: tuple[str, ...]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from ulpt.cli import main; main()", *command],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="300", NO_COLOR="1", TERM="dumb"),
        check=True,
    )
    method_line = next(line for line in out.stdout.splitlines() if "--method" in line)
    assert all(method in method_line for method in METHODS), method_line
