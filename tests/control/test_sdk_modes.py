"""The same SDK calls in both modes: direct (catalog and store credentials) and remote (ULPT_API_URL +
ULPT_API_KEY, over the control plane's HTTP API served by uvicorn on a free port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ulpt
from tests.http_server import serving
from tests.test_jobs_spec import job_dict, write_reviews
from ulpt.errors import NotFoundError, SpecError
from ulpt.sdk import Client
from ulpt_control import ControlConfig, ControlContext, build_app


@pytest.fixture(scope="module")
def control_url(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dirs: dict[str, Path]
) -> Iterator[tuple[str, Path]]:
    """A control plane over a fresh home, on a real socket."""
    home = tmp_path_factory.mktemp("modes") / "home"
    owner = Client(home=home, tenant="acme")
    config = ControlConfig(home=str(home), base_models=(str(tiny_model_dirs["llama"]),))
    app = build_app(ControlContext(config, owner.registry, owner.locations))
    try:
        with serving(app) as url:
            yield url, home
    finally:
        owner.close()


@pytest.fixture(params=["direct", "remote"])
def client(
    request: pytest.FixtureRequest, control_url: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    url, home = control_url
    if request.param == "direct":
        with Client(home=home, tenant="acme") as direct:
            yield direct
        return
    with Client(home=home, tenant="acme") as owner:
        key = owner.keys.create("sdk").key
    monkeypatch.setenv("ULPT_API_URL", url)
    monkeypatch.setenv("ULPT_API_KEY", key)
    with Client(home=home / "unused") as remote:
        assert remote.api is not None and key not in repr(remote)
        yield remote


def test_submit_wait_find_show_alias_delete(
    ray_session: None, client: Client, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl", users=2)
    spec = job_dict(tiny_model_dirs["llama"], data, train={"steps": 2, "eval_every": 2}, tenant=None)
    mode = "remote" if client.api is not None else "direct"
    spec["name"] = f"{mode}-{{user_id}}"
    job = client.train(ulpt.JobSpec.from_dict(spec))
    final = job.wait(timeout=300)
    assert final.status == "done" and final.counts.get("done") == 2
    assert {f.key for f in job.fits()} == {"0", "1"}
    assert job.id in [j.id for j in client.jobs.list()]

    page = client.adapters.find(name=f"{mode}-0", order_by="-created_at")
    assert [r.ref for r in page.items] == [f"{mode}-0:1"] and page.items[0].tenant == "acme"
    both = client.adapters.find(job_id=job.id, metrics={"eval_loss": (">=", 0)}, order_by="name")
    assert [r.name for r in both] == [f"{mode}-0", f"{mode}-1"]
    shown = client.adapters.show(f"{mode}-1")
    assert shown.job is not None and shown.job["id"] == job.id
    assert client.adapters.load(f"{mode}-1:1").num_trainable_params == 4 * 2 + 2 * 64  # n=4, r=2, d=64

    change = client.adapters.alias(f"{mode}-best", f"{mode}-1:1")
    assert change.target.ref == f"{mode}-1:1" and change.previous is None
    assert client.adapters.get(f"{mode}-best").ref == f"{mode}-1:1"
    with pytest.raises(SpecError):
        client.adapters.delete(f"{mode}-0")  # a version is required
    deleted = client.adapters.delete(f"{mode}-0:1")
    assert [r.ref for r in deleted] == [f"{mode}-0:1"] and deleted[0].status == "deleted"
    with pytest.raises(NotFoundError):
        client.adapters.get(f"{mode}-0")
    with pytest.raises(NotFoundError):
        client.jobs.get("00000000-0000-7000-8000-000000000000")


def test_remote_mode_refuses_the_catalog_instead_of_opening_a_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ULPT_API_URL", "http://127.0.0.1:9/control")
    monkeypatch.delenv("ULPT_API_KEY", raising=False)
    with pytest.raises(SpecError, match="ULPT_API_KEY"):
        Client(home=tmp_path)
    monkeypatch.setenv("ULPT_API_KEY", "ulpt_0123456789ab_" + "x" * 40)
    with Client(home=tmp_path) as remote:
        with pytest.raises(ulpt.UlptError, match="remote mode"):
            remote.keys.list()
        with pytest.raises(ulpt.UlptError, match="cannot reach the control plane"):
            remote.adapters.find()
    assert not (tmp_path / "catalog.db").exists()
    with Client(home=tmp_path, catalog_url=f"sqlite:///{tmp_path}/c.db") as direct:  # explicit: direct mode
        assert direct.api is None
