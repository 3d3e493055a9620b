"""`ulpt demo`."""

from __future__ import annotations

import typer


def demo(
    steps: int = typer.Option(30, min=1, help="Optimizer steps per adapter."),
    batch_size: int = typer.Option(4, min=1, help="Rows per adapter per step."),
    test_rows: int = typer.Option(40, min=1, help="Held-out rows per task for the accuracy table."),
) -> None:
    """Run the whole path on the embedded default: train adapters on BIG-bench with SmolLM2, evaluate
    them against zero-shot, save them under ULPT_HOME, and answer with several adapters in one batch."""
    from ulpt.demo import run_demo

    run_demo(steps=steps, batch_size=batch_size, test_rows=test_rows)
