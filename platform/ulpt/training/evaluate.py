"""Held-out evaluation, batched across adapters: loss on targets, and accuracy by scoring labels.

Accuracy scores every candidate label of a row (its own `choices`, or the dataset's label set) by
the summed log-probability of the label's tokens, and counts the rows whose best label is the
target: BIG-bench's multiple-choice scoring, the same for zero-shot and for adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ulpt.adapters import Adapter
from ulpt.models.base import BaseModel, PromptSource, RowSource
from ulpt.models.batch import plan_chunks
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
    model: BaseModel,
    items: Sequence[EvalItem],
    max_rows_per_forward: int = 64,
    max_tokens_per_forward: int = 4096,
    on_rows: Callable[[int, int], None] | None = None,
    spread: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """{key: {"eval_loss", "eval_accuracy" (when labels exist)}} for every item, in shared batches.

    Each row's prompt + input runs once; its target and candidate labels are scored as
    continuations of that shared prefix (`BaseModel.continuation_logprobs`). In decoder-only
    models each prompt's keys and values are computed once and reused by all of its rows.
    `on_rows(done, total)` is called after every forward pass, for progress on long evaluations.
    Items keyed in `spread` also get "eval_loss_se", the standard error of their per-row losses.
    """
    rows = [(item, ex) for item in items for ex in item.examples]
    inline = {item.key: _materialize(item.prompt) for item in items}
    prompts: dict[str, RowSource] = dict(inline)
    if model.supports_prefix_cache:  # each prompt's keys and values once, not once per row
        keys = [key for key, prompt in inline.items() if prompt is not None]
        prompts.update(zip(keys, model.cache_prompts([inline[key] for key in keys])))
    losses: dict[str, list[float]] = {}
    hits: dict[str, list[bool]] = {}
    lengths = [_prompt_length(item.prompt) + len(ex.input_ids) for item, ex in rows]
    done = 0
    for indices in plan_chunks(lengths, max_rows_per_forward, max_tokens_per_forward):
        chunk = [rows[i] for i in indices]
        labels = [list(ex.choices or item.labels or ()) for item, ex in chunk]
        continuations = [
            [ex.target_ids, *(model.encode_target(ex.text, label, eos=False) for label in row_labels)]
            for (_, ex), row_labels in zip(chunk, labels)
        ]
        scored = model.continuation_logprobs(
            [prompts[item.key] for item, _ in chunk], [ex.input_ids for _, ex in chunk], continuations
        )
        # Each row's loss, then its labels' totals, all read back from the device in one transfer.
        flat = torch.stack(
            [v for target, *rest in scored for v in (-target.mean(), *(x.sum() for x in rest))]
        )
        values = iter(flat.tolist())
        for (item, ex), row_labels in zip(chunk, labels):
            losses.setdefault(item.key, []).append(next(values))
            label_scores = [next(values) for _ in row_labels]
            if row_labels:
                best = max(range(len(row_labels)), key=lambda k: label_scores[k])
                hits.setdefault(item.key, []).append(row_labels[best] == ex.target)
        done += len(chunk)
        if on_rows is not None:
            on_rows(done, len(rows))
    out = {key: {"eval_loss": sum(v) / len(v)} for key, v in losses.items()}
    for key in spread:
        if key in losses:
            out[key]["eval_loss_se"] = _standard_error(losses[key])
    for key, h in hits.items():
        out[key]["eval_accuracy"] = sum(h) / len(h)
    return out


def _standard_error(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5


def _prompt_length(prompt: PromptSource) -> int:
    if isinstance(prompt, Adapter):
        return prompt.spec.n_tokens
    return 0 if prompt is None else int(prompt.shape[0])


def _materialize(prompt: PromptSource) -> torch.Tensor | None:
    return prompt.prompt_embeddings() if isinstance(prompt, Adapter) else prompt
