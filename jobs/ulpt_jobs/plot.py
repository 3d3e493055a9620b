"""`ulpt jobs plot`: per-fit training loss curves of a job, as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ulpt.errors import UlptError
from ulpt_jobs.state import FitStatus


def plot_curves(fits: Sequence[FitStatus], path: Path, *, title: str, max_fits: int = 50) -> Path:
    """Up to `max_fits` training curves (thin), their median (thick), and held-out loss points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UlptError("plotting needs matplotlib: pip install matplotlib") from None
    curves = [(fit, fit.metrics.get("train_curve") or []) for fit in fits]
    curves = [(fit, curve) for fit, curve in curves if curve]
    if not curves:
        raise UlptError("no finished fit of this job has a loss curve to plot")
    figure, axis = plt.subplots(figsize=(8, 5), dpi=120)
    for fit, curve in curves[:max_fits]:
        (line,) = axis.plot(range(1, len(curve) + 1), curve, linewidth=0.8, alpha=0.5)
        points = [
            (h["step"], h["eval_loss"]) for h in fit.metrics.get("eval_history") or [] if "eval_loss" in h
        ]
        if points:
            steps, losses = zip(*points)
            axis.scatter(steps, losses, s=8, color=line.get_color())
    longest = max(len(curve) for _, curve in curves)
    median = []
    for step in range(longest):
        values = sorted(curve[step] for _, curve in curves if step < len(curve))
        median.append(values[len(values) // 2])
    axis.plot(
        range(1, longest + 1), median, color="black", linewidth=2.0, label=f"median of {len(curves)} fits"
    )
    shown = min(len(curves), max_fits)
    axis.set(
        xlabel="step",
        ylabel="training loss (dots: held-out loss)",
        title=f"{title}: {shown} of {len(curves)} fits",
    )
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
