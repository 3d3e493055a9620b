"""The console as its own Ray Serve application (route prefix `/console`), next to the inference app
and the control plane: `ulpt serve` deploys it on the same port, a RayService lists it.

    serve run ulpt.console.deployment:build_app api_base=/control

It holds no connection and no secret: a replica serves files and `config.json`, nothing else.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ulpt.console.app import ConsoleConfig, build_console_app

APP_NAME = "ulpt-console"
ROUTE_PREFIX = "/console"


@serve.deployment(name=APP_NAME, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class ConsoleServer:
    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config

    def __serve_build_asgi_app__(self) -> Any:
        return build_console_app(self.config)


def build_application(config: ConsoleConfig) -> Application:
    return ConsoleServer.bind(config)  # type: ignore[attr-defined]


def build_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run ulpt.console.deployment:build_app key=value ...` and a RayService."""
    known = {"api_base", "inference_base", "auth"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown console option(s) {unknown}; known: {sorted(known)}")
    auth = str(args.get("auth", True)).lower() not in ("false", "0", "no")
    return build_application(
        ConsoleConfig(
            api_base=args.get("api_base", ""), inference_base=args.get("inference_base", ""), auth=auth
        )
    )
