"""`ulpt serve` puts the control plane beside the inference app on the same port: its own Serve
application under /control, over the same catalog and store, allowed to train the served model."""

from __future__ import annotations

from typer.testing import CliRunner

from ulpt.cli import app
from ulpt.cli.serve import control_plane
from ulpt_serving.config import ServeConfig


def test_the_control_plane_shares_the_catalog_and_trains_the_served_model() -> None:
    config = ServeConfig(
        model="/models/smollm2",
        served_model_name="smollm2-135m",
        home="/var/lib/ulpt",
        catalog_url="postgresql+psycopg://ulpt@db/ulpt",
        store_url="s3://bucket/adapters",
    )
    companion = control_plane(config)
    assert (companion.name, companion.route_prefix) == ("ulpt-control", "/control")
    (control,) = companion.app._bound_deployment.init_args  # the ControlConfig its replicas open
    assert (control.home, control.catalog_url, control.store_url) == (
        config.home,
        config.catalog_url,
        config.store_url,
    )
    assert set(control.base_models) == {"/models/smollm2", "smollm2-135m"}


def test_serve_help_explains_the_control_option() -> None:
    from ulpt.cli import _register_commands

    _register_commands()
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--no-control" in result.output and "/control" in result.output
