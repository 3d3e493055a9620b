"""Did a fit learn? Its best held-out metric against the base model's on the same rows.

The rule, with n held-out rows:
- accuracy (label targets): learned when the trained accuracy exceeds the zero-shot accuracy p0 by
  more than the binomial 95% half-width of p0 on n rows, 1.96 * sqrt(p0 * (1 - p0) / n) (at p0 = 0
  or 1 that width is 0: one more correct row is enough, and nothing beats 1.0);
- loss (no labels): learned when the trained loss is below the zero-shot loss by more than 1.96
  standard errors of the zero-shot per-row losses.
The trained side is the best checkpoint, chosen on these same rows (and, in a sweep, the best of
the candidates), so it leans optimistic; the margin guards against the noise of small splits, not
against that selection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Z95 = 1.96


def accuracy_margin(zero_shot: float, n: int) -> float:
    """Half-width of the binomial 95% interval of an accuracy `zero_shot` measured on n rows."""
    return Z95 * math.sqrt(zero_shot * (1 - zero_shot) / n)


def learned(trained: Mapping[str, float], zero_shot: Mapping[str, float], n: int) -> bool:
    """The rule above; `trained` and `zero_shot` are evaluation metrics of the same n rows."""
    if "eval_accuracy" in trained and "eval_accuracy" in zero_shot:
        p0 = zero_shot["eval_accuracy"]
        return trained["eval_accuracy"] - p0 > accuracy_margin(p0, n)
    margin = Z95 * zero_shot.get("eval_loss_se", 0.0)
    return zero_shot["eval_loss"] - trained["eval_loss"] > margin


def verdict_metrics(
    trained: Mapping[str, float] | None, zero_shot: Mapping[str, float] | None, n: int
) -> dict[str, float]:
    """{"zero_shot_accuracy" or "zero_shot_loss", "learned": 1.0 or 0.0}; {} without held-out rows.

    `learned` is a number so the catalog's metric filters take it: `--metric learned>=1`.
    """
    if trained is None or zero_shot is None or n == 0:
        return {}
    out = {"zero_shot_loss": zero_shot["eval_loss"]}
    if "eval_accuracy" in zero_shot:
        out["zero_shot_accuracy"] = zero_shot["eval_accuracy"]
    out["learned"] = 1.0 if learned(trained, zero_shot, n) else 0.0
    return out
