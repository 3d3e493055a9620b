"""Hostile arguments across the command line: every one ends as ONE line on stderr naming the cause,
with a non-zero exit code, never a traceback (`ulpt.cli.main` is the real entry point)."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import ulpt
from tests.test_jobs_spec import job_dict, write_jsonl

HOSTILE_DURATION = "99999999999w"


def _main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """(exit code, stderr) of `ulpt ARGS`; an escaping exception counts as the traceback a user would see."""
    import ulpt.cli

    ulpt.cli._register_commands()
    monkeypatch.setattr(sys, "argv", ["ulpt", *args])
    capsys.readouterr()
    try:
        ulpt.cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    except BaseException:  # noqa: BLE001 - exactly what this test looks for
        return 1, "Traceback (most recent call last):\n" + traceback.format_exc()
    return code, capsys.readouterr().err


def _spec(tmp_path: Path, model: Path, stem: str, **changes: object) -> str:
    rows = [
        {"user_id": user, "text": "the food was good. A:", "label": "positive"} for user in ("²", "7")
    ] * 3
    data = write_jsonl(tmp_path / f"{stem}.jsonl", rows)
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(job_dict(model, data, **{"tenant": None, **changes})))
    return str(path)


def _huge_adapter_folder(tmp_path: Path) -> str:
    """8 MB on disk, claiming a 275 GB projection."""
    folder = tmp_path / "huge"
    folder.mkdir()
    config = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=1, rank=2, seed=1), 8).config()
    config.update(rank=65_535, hidden_size=1_048_575)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {"ulpt_z": torch.zeros(1, 65_535), "ulpt_scale": torch.ones(1_048_575)}
    save_file({**tensors, "ulpt_shift": torch.zeros(1_048_575)}, folder / "adapter.safetensors")
    return str(folder)


def test_hostile_arguments_end_in_one_line_errors(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    at = ["--home", str(home)]
    with ulpt.Client(home=home) as client:
        small = ulpt.Adapter.create(ulpt.AdapterSpec(seed=1), 32, base_model="tiny")
        client.adapters.register(small, name="ad1")
    small_folder = str(small.save(tmp_path / "small"))
    model = tiny_model_dirs["llama"]
    hostile = {
        "max_grad_norm text": [
            "train",
            _spec(tmp_path, model, "a", train={"max_grad_norm": "abc"}),
            "--dry-run",
        ],
        "lr true": ["train", _spec(tmp_path, model, "b", train={"lr": True}), "--dry-run"],
        "lr nan": ["train", _spec(tmp_path, model, "c", train={"lr": float("nan")}), "--dry-run"],
        "spec of another tenant": [
            "train",
            _spec(tmp_path, model, "d", tenant="acme"),
            "--tenant",
            "evil",
            "--dry-run",
        ],
        "since overflow": ["adapters", "list", "--since", HOSTILE_DURATION],
        "gc grace overflow": ["gc", "--grace", HOSTILE_DURATION],
        "metric nan": ["adapters", "list", "--metric", "acc>=nan"],
        "bad metric filter": ["adapters", "list", "--metric", "acc~~1"],
        "register huge": ["adapters", "register", _huge_adapter_folder(tmp_path), "--name", "x"],
        "register metric nan": ["adapters", "register", small_folder, "--name", "y", "--metric", "a=nan"],
        "register missing folder": ["adapters", "register", str(tmp_path / "nope"), "--name", "x"],
        "export missing base config": [
            "adapters",
            "export",
            "ad1",
            str(tmp_path / "o"),
            "--peft",
            "--base-config",
            "/nope",
        ],
        "export into proc": ["adapters", "export", "ad1", "/proc/self/x"],
        "foreign ref": ["adapters", "show", "acme/ad1"],
        "bad tenant": ["adapters", "list", "--tenant", "bad tenant"],
        "version overflow": ["adapters", "show", "ad1:99999999999"],
        "job id garbage": ["jobs", "show", "not-a-job"],
        "resume garbage": ["train", "--resume", "not-a-job"],
    }
    failures = {}
    for label, args in hostile.items():
        extra = at if args[0] != "gc" else at + ["--dry-run"]
        code, err = _main([*args, *extra], monkeypatch, capsys)
        lines = err.strip().splitlines()
        if code == 0 or "Traceback" in err or len(lines) != 1 or not lines[0].startswith("error: "):
            failures[label] = (code, err[-600:])
    assert not failures, failures

    # The same data with a group key int() cannot read ('²' is a digit to str.isdigit) plans fine.
    code, err = _main(
        ["train", _spec(tmp_path, model, "e", name="user-{index}"), "--dry-run", *at],
        monkeypatch,
        capsys,
    )
    assert (code, "Traceback" in err) == (0, False), err
