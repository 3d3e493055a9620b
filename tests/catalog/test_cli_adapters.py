"""`ulpt adapters|db|gc` through the real entry point: --json output, and one-line errors with exit code 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.catalog.conftest import Cli
from ulpt.adapters import Adapter
from ulpt.catalog.db import sqlite_url

MakeAdapter = Callable[..., Adapter]
REPO = Path(__file__).resolve().parents[2]


def test_register_list_show_alias_delete_export_gc(
    cli: Cli, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    for seed in (1, 2):
        make_adapter(seed).save(tmp_path / f"a{seed}")
        folder, metric = str(tmp_path / f"a{seed}"), f"eval_accuracy={0.7 + seed / 10}"
        out = cli(
            "adapters", "register", folder, "--name", "user-42", "--tag", "task=sst2", "--metric", metric
        )
        assert f"registered user-42:{seed}" in out
    listing = cli.json(
        "adapters", "list", "--tag", "task=sst2", "--sort", "-metrics.eval_accuracy", "--limit", "1"
    )
    assert [r["ref"] for r in listing["items"]] == ["user-42:2"] and listing["next_cursor"]  # type: ignore[index]
    cursor = listing["next_cursor"]  # type: ignore[index]
    more = cli.json(
        "adapters", "list", "--tag", "task=sst2", "--sort", "-metrics.eval_accuracy", "--cursor", cursor
    )
    assert [r["ref"] for r in more["items"]] == ["user-42:1"] and more["next_cursor"] is None  # type: ignore[index]
    assert "user-42:2" in cli("adapters", "list", "--metric", "eval_accuracy>=0.85")

    assert cli.json("adapters", "alias", "prod", "user-42:1") == {
        "alias": "prod",
        "ref": "user-42:1",
        "previous": None,
    }
    assert "prod -> user-42:2 (was user-42:1)" in cli("adapters", "alias", "prod", "user-42:2")
    assert cli.json("adapters", "alias", "prod", "--rollback")["ref"] == "user-42:1"  # type: ignore[index]
    assert cli.json("adapters", "alias") == [{"alias": "prod", "ref": "user-42:1", "id": cli.json(
        "adapters", "show", "prod")["id"]}]  # type: ignore[index]  # fmt: skip

    shown = cli.json("adapters", "show", "prod")
    assert shown["ref"] == "user-42:1" and shown["lineage"]["aliases"] == ["prod"]  # type: ignore[index]
    assert shown["tags"] == {"task": "sst2"} and shown["blob_sha256"] in shown["blob_key"].replace("/", "")  # type: ignore[index]
    assert "projection_fingerprint" in cli("adapters", "show", "user-42:2")

    out = cli("adapters", "export", "user-42:2", str(tmp_path / "peft"), "--peft")
    assert "wrote PEFT adapter" in out and (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    cli("adapters", "export", "prod", str(tmp_path / "plain"))
    assert Adapter.load(tmp_path / "plain").spec.seed == 1

    assert cli.json("adapters", "delete", "user-42:2") == {"deleted": ["user-42:2"]}
    assert [r["ref"] for r in cli.json("adapters", "list", "--status", "deleted")["items"]] == ["user-42:2"]  # type: ignore[index]
    assert cli.json("gc", "--grace", "1h")["deleted_adapter_blobs"] == 0  # type: ignore[index]
    report = cli.json("gc", "--grace", "0", "--dry-run")
    assert report["deleted_adapter_blobs"] == 1 and report["dry_run"] is True  # type: ignore[index]
    assert "freed 0 orphan blob(s) and 1 deleted adapter blob(s)" in cli("gc", "--grace", "0")


def test_user_mistakes_are_one_line(cli: Cli, make_adapter: MakeAdapter, tmp_path: Path) -> None:
    make_adapter(1).save(tmp_path / "a")
    assert "invalid adapter name 'bad name'" in cli(
        "adapters", "register", str(tmp_path / "a"), "--name", "bad name", code=1
    )
    cli("adapters", "register", str(tmp_path / "a"), "--name", "ok", "--version", "3")
    assert "ok:3 already exists" in cli(
        "adapters", "register", str(tmp_path / "a"), "--name", "ok", "--version", "3", code=1
    )
    assert "no adapter or alias named 'prod'" in cli("adapters", "show", "prod", code=1)
    assert "no alias named 'prod'" in cli("adapters", "alias", "prod", "--rollback", code=1)
    assert "no adapter 'ok:9'" in cli("adapters", "alias", "prod", "ok:9", code=1)
    assert "invalid duration" in cli("gc", "--grace", "soon", code=1)
    assert "cannot sort by" in cli("adapters", "list", "--sort", "size", code=1)
    assert "not an adapter folder" in cli("adapters", "register", str(tmp_path), "--name", "x", code=1)
    record = json.loads(cli("adapters", "show", "ok:3", "--json"))
    blob = Path(os.environ["ULPT_STORE_URL"]) / record["blob_key"]
    os.chmod(blob, 0o644)
    blob.write_bytes(b"garbage")
    assert "is corrupted" in cli("adapters", "export", "ok", str(tmp_path / "out"), code=1)
    blob.unlink()
    assert "is missing" in cli("adapters", "export", "ok", str(tmp_path / "out"), code=1)


def test_db_upgrade_and_current(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path / "fresh.db")
    monkeypatch.setenv("ULPT_CATALOG_URL", url)
    assert cli.json("db", "current")["revision"] is None  # type: ignore[index]
    assert "run `ulpt db upgrade`" in cli("adapters", "list", code=1)
    assert "upgraded: empty -> 0006" in cli("db", "upgrade")
    assert "already at 0006" in cli("db", "upgrade")
    assert cli.json("db", "current")["up_to_date"] is True  # type: ignore[index]
    assert cli.json("adapters", "list") == {"items": [], "next_cursor": None}


def test_unreachable_catalog_in_a_real_process(tmp_path: Path) -> None:
    """No traceback even from the installed entry point, and no password in the message."""
    env = dict(os.environ, ULPT_CATALOG_URL="postgresql+psycopg://ulpt:hunter2@127.0.0.1:9/nowhere")
    env.update(
        ULPT_STORE_URL=str(tmp_path),
        PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("platform", "jobs", "serving", ".")),
    )
    result = subprocess.run(
        [sys.executable, "-c", "from ulpt.cli import main; main()", "adapters", "list"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: cannot use catalog postgresql+psycopg://ulpt:***@127.0.0.1:9/nowhere"
    )
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr
