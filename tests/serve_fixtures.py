"""A real local Ray Serve for the serving tests: tiny models of both families, two tenants, keys.

One Serve instance per session, on a free 127.0.0.1 port (two clusters could share a fixed port and
answer each other's traffic, see notes/ray.md), with three applications deployed together:

- /llama and /t5: authenticated, one tiny model each, adapters of tenant `acme` (20 per family),
  a private adapter and a public one of tenant `globex`;
- /local: no API keys (tenant `acme`), limits of one running and one queued request, for the
  auth-less mode and overload answers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

import ulpt
from ulpt.sdk import Client

N_ADAPTERS = 20
SPECS = [("ulpt", 3), ("pt", 5), ("dpt", 7), ("ulpt", 10), ("pt", 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_adapter(hidden: int, index: int, base_model: str) -> ulpt.Adapter:
    """Adapters of every method and several prompt lengths, moved off their init so rows differ."""
    method, n = SPECS[index % len(SPECS)]
    spec = ulpt.AdapterSpec(method=method, n_tokens=n, rank=4, seed=1000 + index)
    adapter = ulpt.Adapter.create(spec, hidden, base_model=base_model)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(index)))
    return adapter


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Tiny models run ~40x faster with one thread on a busy 2-core machine (no OpenMP contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ServeStack:
    url: str
    """http://127.0.0.1:PORT"""
    home: Path
    keys: dict[str, str]
    """tenant -> API key"""
    adapters: dict[str, dict[str, ulpt.Adapter]] = field(default_factory=dict)
    """family -> adapter name (in tenant acme, or 'globex/NAME') -> adapter"""
    model_dirs: dict[str, Path] = field(default_factory=dict)

    def base(self, app: str) -> str:
        return f"{self.url}/{app}"

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def handle(self, app: str) -> Any:
        from ray import serve

        return serve.get_app_handle(app)


def _register(home: Path, hidden: int, family: str) -> dict[str, ulpt.Adapter]:
    base_model = f"tiny-{family}"
    out: dict[str, ulpt.Adapter] = {}
    with Client(home=home, tenant="acme") as acme:
        for i in range(N_ADAPTERS):
            adapter = make_adapter(hidden, i, base_model)
            acme.adapters.register(adapter, name=f"{family}-{i:02d}")
            out[f"{family}-{i:02d}"] = adapter
        acme.adapters.alias(f"{family}-best", f"{family}-03:1")
    with Client(home=home, tenant="globex") as globex:
        for name, public, index in (("secret", False, 50), ("shared", True, 51)):
            adapter = make_adapter(hidden, index, base_model)
            globex.adapters.register(adapter, name=f"{family}-{name}", public=public)
            out[f"globex/{family}-{name}"] = adapter
    return out


@pytest.fixture(scope="session")
def serve_stack(
    ray_session: None, tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeStack]:
    from ray import serve

    from ulpt_serving.app import Dependencies, build_application
    from ulpt_serving.config import ServeConfig

    home = tmp_path_factory.mktemp("serve-home")
    port = free_port()
    hidden = 64  # build_tiny_model's default width
    stack = ServeStack(url=f"http://127.0.0.1:{port}", home=home, keys={}, model_dirs=dict(tiny_model_dirs))
    for family in ("llama", "t5"):
        stack.adapters[family] = _register(home, hidden, family)
    with Client(home=home) as client:
        stack.keys = {t: client.create_api_key("tests", tenant=t).key for t in ("acme", "globex")}

    common: dict[str, Any] = {"home": str(home), "num_cpus": 0, "torch_threads": 1, "log_requests": True}
    configs = {
        "llama": ServeConfig(model=str(tiny_model_dirs["llama"]), served_model_name="tiny-llama", **common),
        "t5": ServeConfig(model=str(tiny_model_dirs["t5"]), served_model_name="tiny-t5", **common),
        "local": ServeConfig(
            model=str(tiny_model_dirs["llama"]),
            served_model_name="tiny-llama",
            auth=False,
            tenant="acme",
            max_batch_size=1,
            max_ongoing_requests=1,
            max_queued_requests=1,
            retry_after_s=2,
            **common,
        ),
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    targets = []
    for app, config in configs.items():
        config = ServeConfig.from_dict({**config.to_dict(), "app_name": app, "route_prefix": f"/{app}"})
        deps = Dependencies(model_factory=partial(ulpt.load_base_model, config.model))
        targets.append(serve.RunTarget(build_application(config, deps), name=app, route_prefix=f"/{app}"))
    serve.run_many(targets)
    try:
        yield stack
    finally:
        serve.shutdown()
