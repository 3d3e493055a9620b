"""The tasks ulpt generates itself: the demo's, its smoke's and CI's data, with nothing to download."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ulpt.cli import main
from ulpt.data.generated import TASKS, best_constant_accuracy, generate_rows, split_task
from ulpt.errors import DataError


@pytest.mark.parametrize("name", sorted(TASKS))
def test_rows_are_well_formed_and_the_same_for_the_same_seed(name: str) -> None:
    rows = generate_rows(name, 300, seed=7)
    assert rows == generate_rows(name, 300, seed=7)
    assert rows != generate_rows(name, 300, seed=8)
    for row in rows:
        assert set(row) == {"input", "target", "choices"}
        assert row["target"] in row["choices"] and len(set(row["choices"])) == len(row["choices"]) >= 2
        assert row["input"] and not row["input"][-1].isspace()  # the answer follows after one space
    assert len({r["input"] for r in rows}) == len(rows)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_never_share_an_input(name: str) -> None:
    train, validation, test = split_task(name, 400, 40, 100, seed=0)
    assert (len(train), len(validation), len(test)) == (400, 40, 100)
    inputs = [{r["input"] for r in part} for part in (train, validation, test)]
    assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_constant_answer_solves_a_task(name: str) -> None:
    """What the demo's gate compares with: always giving the most frequent target stays far from 1."""
    test = split_task(name, 400, 0, 200, seed=0)[2]
    assert best_constant_accuracy(test) <= 0.6


def test_requests_beyond_a_task_are_refused_in_one_line() -> None:
    with pytest.raises(DataError, match="unknown generated task 'nope'; known: ") as err:
        generate_rows("nope", 10)
    assert "\n" not in str(err.value)
    task = next(iter(TASKS.values()))
    with pytest.raises(DataError, match="distinct rows"):
        generate_rows(task.name, task.max_rows + 1)


def test_best_constant_accuracy_counts_the_most_frequent_target() -> None:
    rows = [{"target": t} for t in "aabca"]
    assert best_constant_accuracy(rows) == 0.6
    assert best_constant_accuracy([]) == 0.0


def test_ulpt_data_generate_writes_the_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = sorted(TASKS)[0]
    argv = ["ulpt", "data", "generate", name, "--out", str(tmp_path), "--train", "30", "--test", "10"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert (len(train), len(test)) == (30, 10)
    assert (train, test) == (split_task(name, 30, 40, 10)[0], split_task(name, 30, 40, 10)[2])
