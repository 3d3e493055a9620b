"""`ulpt demo`."""

from __future__ import annotations

import typer


def demo(
    steps: int = typer.Option(30, min=1, help="Optimizer steps per adapter."),
    batch_size: int = typer.Option(4, min=1, help="Rows per adapter per step."),
    test_rows: int = typer.Option(40, min=1, help="Held-out rows per task for the accuracy table."),
    serve: bool = typer.Option(
        True, help="End by serving the adapters over HTTP on 127.0.0.1 and querying them."
    ),
) -> None:
    """Train adapters on BIG-bench with SmolLM2, compare them with zero-shot, answer in one mixed batch."""
    from ulpt.demo import run_demo

    run_demo(steps=steps, batch_size=batch_size, test_rows=test_rows, serve=serve)
