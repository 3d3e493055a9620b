"""The control plane as its own Ray Serve application, next to the inference app (`ulpt_serving`).

    serve run ulpt_control.deployment:build_app route_prefix=/ data_prefixes=s3://bucket/data

The app is built in each replica after its constructor has opened the catalog and the store
(`__serve_build_asgi_app__`), so nothing holding a connection is pickled.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ulpt_control.app import build_app as build_fastapi
from ulpt_control.config import ControlConfig
from ulpt_control.context import ControlContext


@serve.deployment(name="ulpt-control")
@serve.ingress()
class ControlServer:
    """A replica: one catalog connection pool and store client, shared by every request."""

    def __init__(self, config: ControlConfig) -> None:
        self.context = ControlContext.open(config)

    def __serve_build_asgi_app__(self) -> Any:
        return build_fastapi(self.context)


def build_application(config: ControlConfig) -> Application:
    return ControlServer.options(name=config.app_name).bind(config)  # type: ignore[attr-defined]


def build_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run ulpt_control.deployment:build_app key=value ...` and a RayService."""
    return build_application(ControlConfig.from_dict(args))
