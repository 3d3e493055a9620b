"""`ulpt demo`."""

from __future__ import annotations

import typer


def demo(
    steps: int = typer.Option(None, min=1, help="Optimizer steps per adapter [default: 40; smoke: 3]."),
    batch_size: int = typer.Option(None, min=1, help="Rows per adapter per step [default: 4; smoke: 2]."),
    test_rows: int = typer.Option(
        None, min=1, help="Held-out rows per task for the accuracy table [default: 100; smoke: 8]."
    ),
    serve: bool = typer.Option(
        True, help="End by serving the adapters over HTTP on 127.0.0.1 and querying them."
    ),
    smoke: bool = typer.Option(
        False,
        "--smoke",
        help="Every phase at a tiny size (2 adapters, 3 steps): checks an install.",
    ),
    api: bool = typer.Option(
        False,
        "--api",
        help="Train and read the catalog through the control plane's HTTP API with only an API key "
        "(it runs on 127.0.0.1 for the demo), as a user of a deployed service would.",
    ),
) -> None:
    """Train adapters with SmolLM2 on tasks ulpt generates, compare them with zero-shot, answer in one
    mixed batch, serve them.

    Writes the accuracy table also as JSON to $ULPT_HOME/demo/results.json. The full demo exits
    non-zero when an adapter does not beat the better of zero-shot and the best constant answer by
    10 points on its held-out rows; --smoke only checks that every phase runs. Nothing is downloaded.
    """
    from ulpt.demo import run_demo

    run_demo(steps=steps, batch_size=batch_size, test_rows=test_rows, serve=serve, smoke=smoke, api=api)
