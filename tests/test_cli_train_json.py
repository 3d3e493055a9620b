"""`ulpt train --wait --json` keeps stdout for the JSON: what Ray's driver prints meanwhile goes to stderr."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from ulpt.cli.train import _report


class ChattyJob:
    """A job whose wait prints to stdout, as Ray's driver does with the raylet's warnings."""

    id = "job-1"

    def wait(self, progress: bool = False) -> Any:
        print("(raylet) WARNING: 8 PYTHON worker processes have been started on node ...")
        return SimpleNamespace(id=self.id, status="done", n_fits=2, counts={"failed": 0}, error=None)

    def to_dict(self, fits: bool = True) -> dict[str, Any]:
        return {"id": self.id, "status": "done", "fits": [{"key": "a"}, {"key": "b"}] if fits else []}


def test_the_json_of_a_waited_job_is_all_stdout_holds(capsys: pytest.CaptureFixture[str]) -> None:
    _report(ChattyJob(), wait=True, as_json=True)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert json.loads(out)["id"] == "job-1"  # parses: nothing else on stdout
    assert "(raylet) WARNING" in err  # the warning is still shown, on stderr
