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
    for tenant in ("acme", "globex"):  # a client creates keys only for its own tenant
        with Client(home=home, tenant=tenant) as client:
            stack.keys[tenant] = client.keys.create("tests").key

    # ulpt's own engine: these apps test the API around it (the vLLM engine has its own tests, and
    # vLLM's CPU attention has no kernel for the tiny models' 16-wide heads).
    common: dict[str, Any] = {
        "home": str(home),
        "num_cpus": 0,
        "torch_threads": 1,
        "log_requests": True,
        "engine": "native",
    }
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


def tiny_llama_config(stack: ServeStack, **fields: Any) -> Any:
    """A `ServeConfig` for the tiny llama over `stack`'s catalog, one thread, no reserved CPU."""
    from ulpt_serving.config import ServeConfig

    return ServeConfig(
        model=str(stack.model_dirs["llama"]),
        served_model_name="tiny-llama",
        home=str(stack.home),
        num_cpus=0,
        torch_threads=1,
        **{"engine": "native", **fields},
    )


def deploy_app(name: str, config: Any, deps: Any = None) -> str:
    """Deploy one more application (a `ServeConfig`) on the session's Serve, at route prefix /NAME.

    For tests that need their own catalog, limits, cache sizes or model (`deps`, a `Dependencies`)
    next to `serve_stack`'s apps; the caller removes it with `serve.delete(name)`. Returns the route
    prefix.
    """
    from ray import serve

    from ulpt_serving.app import Dependencies, build_application
    from ulpt_serving.config import ServeConfig

    config = ServeConfig.from_dict({**config.to_dict(), "app_name": name, "route_prefix": f"/{name}"})
    deps = deps or Dependencies(model_factory=partial(ulpt.load_base_model, config.model))
    serve.run(build_application(config, deps), name=name, route_prefix=f"/{name}")
    return f"/{name}"


def replica_process(app: str) -> Any:
    """The OS process (psutil) of `app`'s single replica, found among this session's Ray processes.

    Ray's state API needs the dashboard, which the test Ray runs without; the replica's process title
    (`ray::ServeReplica:APP:...`) under this session's raylet identifies it without touching other Rays.
    """
    import psutil
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = [
        p
        for p in psutil.Process(raylet).children(recursive=True)
        if f"ServeReplica:{app}:" in " ".join(p.cmdline())
    ]
    assert len(found) == 1, f"expected one replica process of {app!r}, found {len(found)}"
    return found[0]


@dataclass
class SideApp:
    """An application of its own on the session's Serve, with its own catalog and store (`home`)."""

    name: str
    url: str
    """http://127.0.0.1:PORT/NAME"""
    home: Path
    base_model: str

    def client(self, tenant: str = "default") -> Client:
        return Client(home=self.home, tenant=tenant)

    def key(self, tenant: str) -> str:
        """A new API key of `tenant` (keys are checked by the replica against this app's catalog)."""
        with self.client(tenant) as client:
            return client.keys.create("tests").key


@pytest.fixture(scope="session")
def side_app(
    serve_stack: ServeStack, tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SideApp]:
    """For tests that add tenants and adapters or damage stored blobs without touching `serve_stack`'s
    catalog; the tiny llama under its own base-model name, and a low max_tokens limit so that
    generated requests stay cheap. Tests register what they need (adapters of `base_model`, hidden 64)."""
    from ray import serve

    from ulpt_serving.config import ServeConfig

    app = SideApp("side", "", tmp_path_factory.mktemp("side-home"), "tiny-side")
    config = ServeConfig(
        model=str(tiny_model_dirs["llama"]),
        served_model_name=app.base_model,
        home=str(app.home),
        num_cpus=0,
        torch_threads=1,
        engine="native",
        max_tokens_limit=16,
        default_max_tokens=8,
        default_chat_max_tokens=8,
        log_requests=False,
    )
    app.url = serve_stack.url + deploy_app(app.name, config)
    try:
        yield app
    finally:
        serve.delete(app.name)
