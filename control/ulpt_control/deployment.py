"""The control plane as its own Ray Serve application, next to the inference app (`ulpt_serving`).

    serve run ulpt_control.deployment:build_app data_prefixes=s3://bucket/data   # at /control

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
    # num_replicas only when asked for, so a Serve config file's deployment options can set it.
    replicas = {"num_replicas": config.num_replicas} if config.num_replicas != 1 else {}
    return ControlServer.options(  # type: ignore[attr-defined]
        name=config.app_name,
        **replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus},
    ).bind(config)


def build_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run ulpt_control.deployment:build_app key=value ...` and a RayService."""
    return build_application(ControlConfig.from_dict(args))
