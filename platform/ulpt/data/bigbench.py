"""BIG-bench JSON tasks (Apache-2.0), an optional source of data; and the rows' deterministic splits.

The task files come from the first source that has them, hash-checked (`ulpt.data.bigbench_sources`:
the cache, `$ULPT_BIGBENCH`, and only where a person asks, the package index and the repository's
archive). Examples are formatted the way
BIG-bench's own `default_format_fn` does it (task prefix, "Q:"/"A:" style prefixes, choices), so
that a row's `input` ends exactly where the model should write the answer.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, Value
from datasets import Sequence as DsSequence

from ulpt.data.bigbench_sources import TASK_FILE, HashList, cache_dir, fetch_task_files
from ulpt.errors import DataError

FEATURES = Features(
    {"input": Value("string"), "target": Value("string"), "choices": DsSequence(Value("string"))}
)
# BIG-bench defaults (bigbench/api/json_task.py) for keys a task.json may omit.
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "
BIGBENCH_SEED = 42  # JsonTask's default random_seed, which orders the choices listed in the input
_SAFE_PART = re.compile(r"[A-Za-z0-9_.+-]+")


def is_safe_task_name(task: str) -> bool:
    """A relative path of plain components (no `..`, no absolute path, no odd characters)."""
    parts = task.split("/")
    return bool(task) and all(_SAFE_PART.fullmatch(p) and p not in (".", "..") for p in parts)


def leaf_tasks(task_names: Iterable[str]) -> list[str]:
    """Drop parent tasks: a folder whose subfolders are tasks only holds metadata, no examples."""
    names = set(task_names)
    parents = {posixpath.dirname(n) for n in names} - {""}
    return sorted(names - parents)


def list_tasks(home: Path | None = None) -> list[str]:
    """The BIG-bench tasks ulpt knows (its hash list) or has cached, e.g. `multiemo/reviews_sentence_en`."""
    folder = cache_dir(home) / "tasks"
    cached = (
        {str(p.parent.relative_to(folder)) for p in folder.rglob(TASK_FILE)} if folder.is_dir() else set()
    )
    return leaf_tasks(set(HashList.read().sha256) | cached)


def task_path(name: str, home: Path | None = None, remote: bool = False) -> Path:
    """The checked, cached task.json of `name` (see `ulpt.data.bigbench_sources` for where it comes from)."""
    return prefetch_tasks([name], home, remote)[name]


def prefetch_tasks(names: Iterable[str], home: Path | None = None, remote: bool = False) -> dict[str, Path]:
    """Make sure the task.json of every named task is cached, from the first source that has it.

    `remote=True` only where a person asked for BIG-bench: it may reach the package index and the
    repository archive. A name found nowhere that looks like a known one is refused with a hint.
    """
    names = list(names)
    try:
        return fetch_task_files(names, home, remote)
    except DataError:
        known = sorted(set(list_tasks(home)) - set(names))
        for name in names:
            if close := difflib.get_close_matches(name, known, n=3, cutoff=0.6):
                raise DataError(
                    f"unknown BIG-bench task {name!r}; did you mean {', '.join(close)}?"
                ) from None
        raise


def load_task(
    name: str, home: Path | None = None, append_choices: bool | None = None, remote: bool = False
) -> Dataset:
    """A BIG-bench task as a Dataset with columns `input`, `target`, `choices`.

    `input` ends where the answer starts (e.g. "...\\nA:"), `target` has no leading space (see
    `answer_text`), `choices` are the target_scores keys ([] for free-form tasks).
    `append_choices=None` follows the task's own `append_choices_to_input` setting.
    """
    try:
        task = json.loads(task_path(name, home, remote).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"BIG-bench task {name!r} is not valid JSON: {err}") from err
    rows = format_examples(task, append_choices)
    if not rows:
        raise DataError(f"BIG-bench task {name!r} has no usable examples")
    return Dataset.from_list(rows, features=FEATURES)


def format_examples(task: Mapping[str, Any], append_choices: bool | None = None) -> list[dict[str, Any]]:
    """Format a parsed task.json like BIG-bench does; duplicate and unlabelled examples are dropped."""
    task_prefix = str(task.get("task_prefix", ""))
    input_prefix = str(task.get("example_input_prefix", DEFAULT_INPUT_PREFIX))
    output_prefix = str(task.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX))
    choice_prefix = str(task.get("choice_prefix", DEFAULT_CHOICE_PREFIX))
    if append_choices is None:
        append_choices = _as_bool(task.get("append_choices_to_input", True))
    # BIG-bench glues choices together when choice_prefix is "" (e.g. multiemo); those tasks
    # already name the options in their task_prefix, so listing them again adds only noise.
    append_choices = append_choices and bool(choice_prefix.strip())
    seen: set[str] = set()
    rows = []
    for example in task.get("examples", []):
        key = json.dumps(example, sort_keys=True)
        if key in seen or not isinstance(example, dict) or "input" not in example:
            continue
        seen.add(key)
        scores = example.get("target_scores") or {}
        choices = [str(c).strip() for c in scores]
        target = _label(scores, example.get("target"))
        if target is None:
            continue
        text = str(example["input"])
        if scores and append_choices:
            order = np.random.RandomState(seed=BIGBENCH_SEED).permutation(sorted(str(c) for c in scores))
            text += choice_prefix + choice_prefix.join(order)
        prompt = (task_prefix + input_prefix + text + output_prefix).lstrip().rstrip(" ")
        rows.append({"input": prompt, "target": target, "choices": choices})
    return rows


def _label(scores: Mapping[str, Any], target: Any) -> str | None:
    """The highest-scoring choice (first on ties, like BIG-bench), else the (first) target."""
    if scores:
        values = [float(v) for v in scores.values()]
        best = max(values)
        if best > min(values) or (len(values) == 1 and best > 0):
            return str(next(k for k, v in zip(scores, values, strict=True) if v == best)).strip()
    if isinstance(target, list):
        target = target[0] if target else None
    if target is None:
        return None
    return str(target).strip() or None


def _as_bool(value: Any) -> bool:
    # A few task.json files spell it as the string "false".
    return value.strip().lower() not in ("false", "0", "no", "") if isinstance(value, str) else bool(value)


def answer_text(input_text: str, target: str) -> str:
    """What the model should write after `input`: the target after one space, unless the
    input already ends a line or with whitespace."""
    return target if not input_text or input_text[-1].isspace() else " " + target


def split_rows(
    ds: Dataset | Sequence[Mapping[str, Any]], eval_fraction: float, test_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic (train, eval, test) lists of {input, target, choices}.

    Rows are ordered by a SHA-256 of (seed, index) rather than a PRNG, so the split is identical
    across Python, NumPy and platform versions. A positive fraction always gets at least one row.
    """
    if not (0 <= eval_fraction < 1 and 0 <= test_fraction < 1 and eval_fraction + test_fraction < 1):
        raise DataError(f"eval_fraction={eval_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                        "and sum to less than 1")  # fmt: skip
    rows = [{"input": r["input"], "target": r["target"], "choices": list(r.get("choices") or [])} for r in ds]
    n = len(rows)
    n_test = max(round(n * test_fraction), 1 if test_fraction > 0 else 0)
    n_eval = max(round(n * eval_fraction), 1 if eval_fraction > 0 else 0)
    if n - n_test - n_eval < 1:
        raise DataError(f"{n} rows are too few for eval {eval_fraction} and test {test_fraction} fractions")
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    shuffled = [rows[i] for i in order]
    return shuffled[n_test + n_eval :], shuffled[n_test : n_test + n_eval], shuffled[:n_test]
