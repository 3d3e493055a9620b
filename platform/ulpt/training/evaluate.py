"""Held-out evaluation, batched across adapters: loss on targets, and accuracy by scoring labels.

Accuracy scores every candidate label of a row (its own `choices`, or the dataset's label set) by
the summed log-probability of the label's tokens, and counts the rows whose best label is the
target: BIG-bench's multiple-choice scoring, the same for zero-shot and for adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ulpt.models.base import BaseModel, PromptSource
from ulpt.training.examples import Example


@dataclass
class EvalItem:
    """What to evaluate: one adapter (or None for zero-shot) on some examples."""

    key: str
    prompt: PromptSource
    examples: Sequence[Example]
    labels: Sequence[str] | None = None


@torch.no_grad()
def evaluate(
    model: BaseModel, items: Sequence[EvalItem], max_rows_per_forward: int = 64
) -> dict[str, dict[str, float]]:
    """{key: {"eval_loss", "eval_accuracy" (when labels exist)}} for every item, in shared batches."""
    jobs: list[tuple[EvalItem, int, str | None]] = []
    for item in items:
        for index, ex in enumerate(item.examples):
            jobs.append((item, index, None))
            jobs += [(item, index, label) for label in ex.choices or item.labels or ()]
    prompts = {item.key: _materialize(item.prompt) for item in items}
    scores: list[float] = []
    for start in range(0, len(jobs), max_rows_per_forward):
        chunk = jobs[start : start + max_rows_per_forward]
        examples = [item.examples[index] for item, index, _ in chunk]
        targets = [
            ex.target_ids if label is None else tuple(model.encode_target(ex.text, label, eos=False))
            for ex, (_, _, label) in zip(examples, chunk)
        ]
        logp, mask = model.target_logprobs(
            [prompts[item.key] for item, _, _ in chunk], [ex.input_ids for ex in examples], targets
        )
        for total, count, (_, _, label) in zip(logp.sum(1), mask.sum(1), chunk):
            scores.append(float(-total / count) if label is None else float(total))
    return _summarize(jobs, scores)


def _materialize(prompt: PromptSource) -> torch.Tensor | None:
    from ulpt.adapters import Adapter

    return prompt.prompt_embeddings() if isinstance(prompt, Adapter) else prompt


def _summarize(
    jobs: Sequence[tuple[EvalItem, int, str | None]], scores: Sequence[float]
) -> dict[str, dict[str, float]]:
    losses: dict[str, list[float]] = {}
    by_row: dict[tuple[str, int], dict[str, float]] = {}
    for (item, index, label), score in zip(jobs, scores):
        if label is None:
            losses.setdefault(item.key, []).append(score)
        else:
            by_row.setdefault((item.key, index), {})[label] = score
    out = {key: {"eval_loss": sum(v) / len(v)} for key, v in losses.items()}
    hits: dict[str, list[bool]] = {}
    items = {item.key: item for item, _, _ in jobs}
    for (key, index), label_scores in by_row.items():
        best = max(label_scores, key=label_scores.__getitem__)
        hits.setdefault(key, []).append(best == items[key].examples[index].target)
    for key, h in hits.items():
        out[key]["eval_accuracy"] = sum(h) / len(h)
    return out
