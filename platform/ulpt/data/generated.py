"""Tasks ulpt generates itself: the demo's, its smoke's and CI's data, with nothing to download.

Each task is a function of a `random.Random` that makes one row `{input, target, choices}`; a task's
rows are drawn from a seeded generator, so the same name and seed give the same rows on every
machine and Python version (`random.Random` with an integer seed is stable across versions). Rows are
deduplicated by their input before they are split, so train, validation and test never share an input.

The tasks are chosen so that a prompt adapter has something to learn that the frozen model cannot
guess from the input alone: the input never says what is asked (which operation, which label names),
and every row is scored against its own `choices` (accuracy is BIG-bench's multiple-choice scoring,
`ulpt.training.evaluate`), so zero-shot sits near chance and so does the best constant answer.

Measured on SmolLM2-135M at the demo's budget (40 steps of 4 rows, 100 test rows), zero-shot -> PT
(lr 0.03) / ULPT r=2 (lr 0.3): sum-of-pair 0.04 -> 0.95 / 0.07, largest 0.18 -> 0.85 / 0.37,
category-code 0.39 -> 0.55 / 0.18, compare 0.47 -> 0.75 / 0.59. Dropped: a unit conversion whose
choices differ in length (summed log-probabilities pick the shortest: 0.00 for every method) and
a parity task no method learned in that budget.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ulpt.errors import DataError

Row = dict[str, Any]


@dataclass(frozen=True)
class GeneratedTask:
    """A named row generator and what it asks of the model."""

    name: str
    description: str
    make_row: Callable[[random.Random], Row]
    max_rows: int
    """How many distinct inputs the generator can make, at least (bounds a request for rows)."""


def _row(text: str, target: str, choices: Sequence[str], rng: random.Random) -> Row:
    options = list(dict.fromkeys(choices))  # distinct, target included, in a seeded order
    rng.shuffle(options)
    return {"input": text, "target": target, "choices": options}


def _sum_of_pair(rng: random.Random) -> Row:
    """Two numbers and no operator: the answer is their sum, among the other operations' results."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    candidates = [str(a + b), str(abs(a - b)), f"{a}{b}", str(max(a, b))]
    return _row(f"{a} {b} ->", str(a + b), candidates, rng)


def _largest(rng: random.Random) -> Row:
    """Four numbers: the answer is the largest, the choices are the four numbers."""
    numbers = rng.sample(range(10, 100), 4)
    return _row(f"{' '.join(map(str, numbers))} ->", str(max(numbers)), [str(n) for n in numbers], rng)


_CATEGORIES = {
    "north": "cat dog horse cow sheep goat lion tiger bear wolf fox rabbit mouse deer zebra camel".split(),
    "south": "apple banana cherry grape lemon mango melon orange peach pear plum kiwi lime fig berry".split(),
    "east": "red blue green yellow purple orange pink brown black white gray violet cyan gold silver".split(),
    "west": "car bus train truck bicycle boat ship plane taxi tram van scooter canoe rocket wagon".split(),
}
_CATEGORIES["east"] = [w for w in _CATEGORIES["east"] if w != "orange"]  # a fruit too: one label only


def _category_code(rng: random.Random) -> Row:
    """Two words of one kind (animals, fruits, colours, vehicles) named by an arbitrary code word."""
    code = rng.choice(sorted(_CATEGORIES))
    first, second = rng.sample(_CATEGORIES[code], 2)
    return _row(f"{first}, {second} ->", code, sorted(_CATEGORIES), rng)


def _compare(rng: random.Random) -> Row:
    """Two numbers: the answer says which is larger with two arbitrary words."""
    a, b = rng.sample(range(100, 1000), 2)
    return _row(f"{a} {b} ->", "left" if a > b else "right", ["left", "right"], rng)


TASKS: dict[str, GeneratedTask] = {
    task.name: task
    for task in (
        GeneratedTask(
            "sum-of-pair", "the sum of two 2-digit numbers given without an operator", _sum_of_pair, 8000
        ),
        GeneratedTask("largest", "the largest of four 2-digit numbers", _largest, 100_000),
        GeneratedTask("category-code", "the code word of the kind two words share", _category_code, 800),
        GeneratedTask("compare", "which of two numbers is larger, in two code words", _compare, 100_000),
    )
}


def task_names() -> list[str]:
    return sorted(TASKS)


def generate_rows(name: str, n_rows: int, seed: int = 0) -> list[Row]:
    """`n_rows` rows of task `name` with distinct inputs, the same for the same name and seed."""
    task = TASKS.get(name)
    if task is None:
        raise DataError(f"unknown generated task {name!r}; known: {', '.join(task_names())}")
    if not 0 < n_rows <= task.max_rows:
        raise DataError(f"task {name!r} makes between 1 and {task.max_rows} distinct rows, not {n_rows}")
    rng = random.Random(f"{name}:{seed}")
    rows: dict[str, Row] = {}
    for _ in range(50 * n_rows):
        row = task.make_row(rng)
        rows.setdefault(row["input"], row)
        if len(rows) == n_rows:
            return list(rows.values())
    raise DataError(f"task {name!r} made only {len(rows)} distinct rows of the {n_rows} asked")


def split_task(
    name: str, train: int, validation: int, test: int, seed: int = 0
) -> tuple[list[Row], list[Row], list[Row]]:
    """(train, validation, test) rows of a generated task; no input appears in two of them."""
    rows = generate_rows(name, train + validation + test, seed)
    return rows[:train], rows[train : train + validation], rows[train + validation :]


def best_constant_accuracy(rows: Sequence[Row]) -> float:
    """The accuracy of always giving the most frequent target: the floor a learned adapter must beat."""
    if not rows:
        return 0.0
    return max(Counter(r["target"] for r in rows).values()) / len(rows)
