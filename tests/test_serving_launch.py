"""A deployment that fails in its replicas says why in one line (the replica's own error), instead of
Serve's "Deploying application failed" with the cause left in the controller's log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ray import serve

from tests.serve_fixtures import ServeStack
from ulpt.errors import UlptError
from ulpt_serving.app import build_application
from ulpt_serving.config import ServeConfig
from ulpt_serving.launch import deploy, failure_cause


def test_a_replica_that_cannot_load_its_model_fails_the_deployment_with_its_cause(
    serve_stack: ServeStack, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A model folder with a config but no weights passes every check a CLI can make cheaply."""
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dirs["llama"], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    config = ServeConfig(
        model=str(folder),
        home=str(serve_stack.home),
        app_name="broken",
        route_prefix="/broken",
        num_cpus=0,
        engine="native",
    )
    try:
        with pytest.raises(UlptError) as failed:
            deploy(build_application(config), config)
    finally:
        serve.delete("broken")
    message = str(failed.value)
    assert message.startswith("deploying application 'broken' failed: OSError: ")
    assert "no file named model.safetensors" in message and "\n" not in message, message


def test_the_cause_is_the_exception_line_of_a_replica_traceback() -> None:
    message = (
        "Failed to update the deployments ['ulpt'].\n"
        "The deployment failed to start 3 times in a row. See controller logs for details. Error:\n"
        "Traceback (most recent call last):\n"
        '  File "/x/replica.py", line 1, in initialize_and_get_metadata\n'
        "    await self._replica_impl.initialize(deployment_config)\n"
        "ray.exceptions.RayTaskError(OSError): ray::ServeReplica:ulpt:ulpt.initialize() (pid=7, ip=1.2.3.4)\n"
        "OSError: /etc does not appear to have a file named config.json.\n"
    )
    assert failure_cause(message) == "OSError: /etc does not appear to have a file named config.json."
    assert (
        failure_cause("The deployments ['ulpt'] are UNHEALTHY.") == "The deployments ['ulpt'] are UNHEALTHY."
    )
