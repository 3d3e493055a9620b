"""The control plane in-process (Starlette's TestClient) over an embedded catalog and store, with
two tenants (acme, globex), a key of each scope, and a few adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import ulpt
from ulpt.sdk import Client
from ulpt_control import ControlConfig, ControlContext, build_app

HIDDEN = 16


def make_adapter(seed: int) -> ulpt.Adapter:
    return ulpt.Adapter.create(
        ulpt.AdapterSpec(method="ulpt", n_tokens=2, rank=2, seed=seed), hidden_size=HIDDEN
    )


@dataclass
class Plane:
    """An app, the SDK clients behind it, and keys: `keys[tenant][scope]` ('all' has every scope)."""

    http: TestClient
    clients: dict[str, Client]
    keys: dict[str, dict[str, str]] = field(default_factory=dict)

    def call(self, method: str, url: str, tenant: str = "acme", scope: str = "all", **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[tenant][scope]}", **kw.pop("headers", {})}
        return self.http.request(method, url, headers=headers, **kw)


@pytest.fixture()
def make_plane(tmp_path: Path) -> Iterator[Callable[..., Plane]]:
    opened: list[Plane] = []

    def make(**config: Any) -> Plane:
        home = tmp_path / "home"
        clients = {t: Client(home=home, tenant=t) for t in ("acme", "globex")}
        acme = clients["acme"]
        ctx = ControlContext(ControlConfig(home=str(home), **config), acme.registry, acme.locations)
        plane = Plane(TestClient(build_app(ctx), raise_server_exceptions=False), clients)
        for tenant, client in clients.items():
            plane.keys[tenant] = {
                "all": client.keys.create("all").key,
                **{s: client.keys.create(s, scopes=[s]).key for s in ("read", "train", "admin")},
            }
        for seed, name in enumerate(["user-1", "user-1", "user-2"]):
            acme.adapters.register(
                make_adapter(seed), name=name, base_model="tiny", metrics={"eval_accuracy": 0.5 + seed / 10}
            )
        clients["globex"].adapters.register(make_adapter(9), name="theirs", base_model="tiny")
        opened.append(plane)
        return plane

    yield make
    for plane in opened:
        plane.http.close()
        for client in plane.clients.values():
            client.close()


@pytest.fixture()
def plane(make_plane: Callable[..., Plane]) -> Plane:
    return make_plane()
