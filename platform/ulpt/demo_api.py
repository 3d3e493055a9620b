"""`ulpt demo --api`: the demo's training and catalog calls through the control plane's HTTP API.

The control plane runs as its own Ray Serve application on 127.0.0.1 (a free port) over the demo's
home; an operator's step creates a key of tenant `default`, and the demo's client then holds only the
URL and the key (remote mode), exactly as a user of a deployed service would.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ulpt.config import ensure_ray
from ulpt.sdk import Client


@contextmanager
def demo_client(home: Path, api: bool) -> Iterator[Client]:
    """A direct client of `home`, or with `api` a remote one whose calls go over HTTP."""
    if not api:
        with Client(home=home) as client:
            yield client
        return
    from ray import serve

    from ulpt_control import ControlConfig
    from ulpt_control.deployment import build_application

    with Client(home=home) as operator:  # the one step that needs the catalog: a key for the user
        key = operator.keys.create("demo", scopes=["read", "train"]).key
    port = _free_port()
    ensure_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ControlConfig(home=str(home))
    serve.run(build_application(config), name=config.app_name, route_prefix=config.route_prefix)
    try:
        with Client(api_url=f"http://127.0.0.1:{port}{config.route_prefix}", api_key=key) as client:
            yield client
    finally:
        serve.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
