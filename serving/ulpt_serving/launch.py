"""Start the serving application on a local Ray (or a given cluster): `ulpt serve`, the demo, benchmarks.

with LocalServer(ServeConfig(auth=False)) as url:      # http://127.0.0.1:8000
    ...                                                # OpenAI clients use f"{url}/v1"
"""

from __future__ import annotations

import errno
import re
import socket
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, NamedTuple

from ulpt.config import ensure_ray
from ulpt.errors import UlptError
from ulpt_serving.config import ServeConfig


def check_port_free(host: str, port: int) -> None:
    """Fail early with one line: Serve's proxy would otherwise retry binding a taken port forever."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UlptError(
                    f"port {port} on {host} is already in use; pick another with --port"
                ) from None
            raise UlptError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def base_url(config: ServeConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    prefix = config.route_prefix.rstrip("/")
    return f"http://{host}:{config.port}{prefix}"


class Companion(NamedTuple):
    """Another Serve application deployed on the same port under its own route prefix (the control plane)."""

    app: Any
    name: str
    route_prefix: str


def start(config: ServeConfig, *, address: str | None = None, companions: Sequence[Companion] = ()) -> str:
    """Deploy the application and its companions (waiting until they run) and return its base URL."""
    from ray import serve

    from ulpt_serving.app import build_application

    check_port_free(config.host, config.port)
    ensure_ray(address)
    serve.start(http_options={"host": config.host, "port": config.port})
    deploy(build_application(config), config)
    for companion in companions:
        serve.run(companion.app, name=companion.name, route_prefix=companion.route_prefix)
    return base_url(config)


def deploy(app: Any, config: ServeConfig) -> None:
    """`serve.run`, with a failed deployment's real cause (a replica's error) as one line."""
    from ray import serve

    try:
        serve.run(app, name=config.app_name, route_prefix=config.route_prefix)
    except RuntimeError as exc:
        # Serve's own message only says the application failed; the cause is in the deployment status.
        status = serve.status().applications.get(config.app_name)
        messages = [d.message for d in status.deployments.values() if d.message] if status else []
        cause = failure_cause("\n".join(messages) or str(exc))
        raise UlptError(f"deploying application {config.app_name!r} failed: {cause}") from None


def failure_cause(message: str) -> str:
    """The line of a deployment's status message that names the error, without Ray's framing.

    A replica whose constructor raised reports its traceback, whose last line is the exception (Ray
    prefixes it with `ray.exceptions.RayTaskError(...)` or a pid); that line is what a person needs.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
    line = errors[-1] if errors else (lines[-1] if lines else "no cause reported")
    return _RAY_PREFIX.sub("", line)


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit)\b(?:\([\w.]+\))?:")
_RAY_PREFIX = re.compile(r"^(?:ray\.exceptions\.)?RayTaskError\([\w.]+\):\s*(?:\S+\s+\(pid=\d+[^)]*\)\s*)?")


class LocalServer:
    """The application on a local Ray for the duration of a `with` block; Ray is stopped if we started it."""

    def __init__(
        self, config: ServeConfig, *, address: str | None = None, companions: Sequence[Companion] = ()
    ) -> None:
        self.config = config
        self.address = address
        self.companions = companions
        self._started_ray = False

    def __enter__(self) -> str:
        import ray

        self._started_ray = not ray.is_initialized()
        try:
            return start(self.config, address=self.address, companions=self.companions)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            if self._started_ray:
                ray.shutdown()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def serve_forever(
    config: ServeConfig,
    *,
    address: str | None = None,
    announce: bool = True,
    companions: Sequence[Companion] = (),
) -> None:
    """`ulpt serve`: run until Ctrl-C, then shut the application (and a Ray we started) down."""
    with LocalServer(config, address=address, companions=companions) as url:
        if announce:
            print(f"ulpt serving {config.base_model_name} at {url}/v1 (Ctrl-C to stop)", flush=True)
            root = url[: -len(config.route_prefix.rstrip("/"))] if config.route_prefix.rstrip("/") else url
            for companion in companions:
                print(f"{companion.name} at {root}{companion.route_prefix}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", flush=True)
