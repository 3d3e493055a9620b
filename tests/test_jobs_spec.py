"""Job specs: YAML and flags, validation that names the field, seeds, name templates, and planning
against real data files and a real (tiny) model, all before anything runs. No Ray here."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import ulpt
from ulpt.errors import SpecError
from ulpt.jobspec import DatasetSpec, FitSpec, JobSpec, derive_seed
from ulpt_jobs.plan import dataset_fingerprint, make_plan

POSITIVE = "good great love happy clean fast".split()
NEGATIVE = "bad awful hate sad dirty slow".split()


def review_rows(user: Any, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{user}:{seed}")
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append(
            {"user_id": user, "text": f"the {rng.choice(['movie', 'food'])} was {word}. A:", "label": label}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_reviews(path: Path, users: int, rows_per_user: int = 6) -> Path:
    return write_jsonl(path, [r for u in range(users) for r in review_rows(u, rows_per_user, 0)])


def job_dict(model: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    """The issue's YAML example, on a tiny model and a generated review file."""
    spec: dict[str, Any] = {
        "tenant": "acme",
        "base_model": str(model),
        "dataset": {"path": str(data), "input": "text", "target": "label", "group_by": "user_id"},
        "adapter": {"method": "ulpt", "n_tokens": 4, "rank": 2, "seed": 1234},
        "train": {"steps": 8, "lr": 0.05, "batch_size": 2, "eval_every": 4},
        "name": "user-{user_id}",
        "tags": {"project": "demo"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture()
def reviews(tmp_path: Path) -> Path:
    return write_reviews(tmp_path / "reviews.jsonl", users=5)


# ---- the spec alone ------------------------------------------------------------------------------


def test_yaml_with_the_issue_keys_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "tenant: acme\n"
        "base_model: ./models/tiny\n"
        "dataset: {path: data/reviews.jsonl, input: text, target: label, group_by: user_id,\n"
        "          eval_fraction: 0.2}\n"
        "adapter: {method: ulpt, n_tokens: 10, rank: 2, seed: 1234, seed_policy: per_fit}\n"
        "train: {steps: 200, lr: 0.01, batch_size: 8, epochs: 2}\n"
        'name: "user-{user_id}"\n'
        "tags: {project: demo}\n"
    )
    spec = JobSpec.from_yaml(path)
    assert (
        spec.tenant == "acme"
        and spec.dataset.group_by == "user_id"
        and spec.dataset.path == ("data/reviews.jsonl",)
    )
    assert spec.adapter.seed_policy == "per_fit" and spec.train.epochs == 2 and spec.train.batch_size == 8
    assert spec.adapter_for(None) == ulpt.AdapterSpec(method="ulpt", n_tokens=10, rank=2, seed=1234)
    assert spec.tags == {"project": "demo"}
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"lr": -1}}, r"^train\.lr must be greater than 0, got -1"),
        ({"train": {"steps": 0}}, r"^train\.steps must be greater than or equal to 1, got 0"),
        ({"train": {"stepz": 3}}, r"^train\.stepz is not a known field; known: batch_size, "),
        ({"train": {"epochs": 0}}, r"^train\.epochs must be greater than 0, got 0"),
        ({"train": {"lr": True}}, r"^train\.lr must be a finite number, got True"),
        ({"train": {"lr": float("nan")}}, r"^train\.lr must be a finite number"),
        ({"train": {"weight_decay": False}}, r"^train\.weight_decay must be a finite number"),
        ({"train": {"max_grad_norm": "abc"}}, r"^train\.max_grad_norm must be a finite number, got 'abc'"),
        ({"train": {"max_grad_norm": float("inf")}}, r"^train\.max_grad_norm must be a finite number"),
        ({"train": {"warmup_steps": True}}, r"^train\.warmup_steps must be an integer, got True"),
        ({"train": {"epochs": float("inf")}}, r"^train\.epochs must be a finite number"),
        ({"dataset": {"eval_fraction": float("nan")}}, r"^dataset\.eval_fraction must be a finite"),
        ({"adapter": {"rank": 0}}, r"^adapter\.rank must be greater than or equal to 1, got 0"),
        (
            {"adapter": {"method": "lora"}},
            r"^adapter\.method must be one of 'ulpt', 'pt', 'dpt', 'lopt1' or 'lopt2'",
        ),
        (
            {"adapter": {"seed_policy": "random"}},
            r"^adapter\.seed_policy must be one of 'shared' or 'per_fit'",
        ),
        ({"dataset": {"eval_fraction": 1.5}}, r"^dataset\.eval_fraction must be less than 1, got 1\.5"),
        ({"dataset": {"format": "xml"}}, r"^dataset\.format must be one of"),
        ({"dataset": {"per_file": True}}, r"^dataset: group_by and per_file are exclusive"),
        ({"dataset": {"colour": "red"}}, r"^dataset\.colour is not a known field; known: choices, "),
        ({"name": "user-{user}"}, r"^name: unknown placeholder \{user\}"),
        ({"tags": {"owner": "{nobody}"}}, r"^tags\.owner: unknown placeholder \{nobody\}"),
        ({"num_workers": 0}, r"^num_workers must be greater than or equal to 1, got 0"),
        ({"fits_per_worker": "many"}, r"^fits_per_worker must be an integer"),
        ({"tenant": "bad tenant"}, r"^tenant: invalid tenant"),
        ({"gpus": 2}, r"^gpus is not a known field; known: adapter, base_model, "),
        (
            {"fits": [{"key": "3", "adapter": {"rank": -2}}]},
            r"^fits\[3\]\.adapter\.rank must be greater than",
        ),
        ({"fits": [{"key": "3", "path": "x.jsonl"}]}, r"^fits\[3\]\.path: a job split by group_by"),
        ({"fits": [{"key": "3"}, {"key": "3"}]}, r"^fits: key '3' appears twice"),
    ],
)
def test_bad_specs_name_the_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        JobSpec.from_dict(job_dict(tmp_path / "model", tmp_path / "data.jsonl", **change))


def test_the_constructor_reads_sections_like_the_yaml() -> None:
    spec = JobSpec(
        base_model="m",
        dataset={"path": "d.jsonl", "group_by": "user_id"},
        adapter={"rank": 4},
        train={"steps": 5},
        fits=[{"key": "u1", "train": {"lr": 0.5}}],
    )
    assert spec.dataset.path == ("d.jsonl",) and spec.adapter.rank == 4 and spec.train.steps == 5
    assert spec.fits[0].train == {"lr": 0.5}
    with pytest.raises(SpecError, match=r"^train\.steps must be greater than or equal to 1"):
        JobSpec(base_model="m", dataset=DatasetSpec(path=("d.jsonl",)), train={"steps": 0})


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("base_model: x\ndataset: {path: [a\n")
    with pytest.raises(SpecError, match=r"job\.yaml: line \d+: invalid YAML"):
        JobSpec.from_yaml(path)
    path.write_text("base_model: x\ndataset: {path: a.jsonl}\ntrain: {lr: 0}\n")
    with pytest.raises(SpecError, match=r"job\.yaml: train\.lr must be"):
        JobSpec.from_yaml(path)
    with pytest.raises(SpecError, match="cannot read job spec"):
        JobSpec.from_yaml(tmp_path / "missing.yaml")


def test_per_fit_seeds_are_derived_deterministically() -> None:
    spec = JobSpec(
        base_model="m",
        dataset=DatasetSpec(path=("d.jsonl",), group_by="user_id"),
        adapter={"seed": 7, "seed_policy": "per_fit"},
        fits=(FitSpec(key="pinned", adapter={"seed": 5}),),
    )
    seeds = {key: spec.adapter_for(None, key).seed for key in ("u1", "u2")}
    assert seeds == {"u1": derive_seed(7, "u1"), "u2": derive_seed(7, "u2")} and seeds["u1"] != seeds["u2"]
    assert derive_seed(7, "u1") == 4710703122118239182  # fixed forever: recorded adapters depend on it
    assert spec.adapter_for(spec.fits[0]).seed == 5  # an explicit seed is kept as is
    shared = JobSpec(base_model="m", dataset=DatasetSpec(path=("d.jsonl",)), adapter=ulpt.AdapterSpec(seed=7))
    assert shared.adapter_for(None, "u1").seed == shared.adapter_for(None, "u2").seed == 7


# ---- planning against data and model -------------------------------------------------------------


def test_plan_groups_rows_by_user_with_names_tags_seeds_and_fingerprints(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], reviews: Path
) -> None:
    spec = JobSpec.from_dict(
        job_dict(
            tiny_model_dirs["llama"],
            reviews,
            adapter={"seed_policy": "per_fit"},
            tags={"user": "{user_id}"},
            dataset={"eval_fraction": 0.34},
        )
    )
    plan = make_plan(spec, tmp_path / "home")
    assert plan.hidden_size == 64 and plan.rows_read == 30
    assert [f.key for f in plan.fits] == ["0", "1", "2", "3", "4"]
    first = plan.fits[0]
    assert first.name == "user-0" and first.tags == {"project": "demo", "user": "0"}
    assert (len(first.train_rows), len(first.eval_rows)) == (4, 2) and first.error is None
    assert first.train_rows[0].keys() == {"input", "target", "choices"}
    assert first.adapter.seed == derive_seed(1234, "0")
    assert first.fingerprint == dataset_fingerprint(first.train_rows, first.eval_rows)
    again = make_plan(spec, tmp_path / "home")
    assert [f.fingerprint for f in again.fits] == [f.fingerprint for f in plan.fits]
    assert len({f.fingerprint for f in plan.fits}) == 5


def test_epochs_set_steps_per_fit(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", review_rows("small", 4, 0) + review_rows("big", 20, 0))
    spec = JobSpec.from_dict(
        job_dict(tiny_model_dirs["llama"], data, dataset={"eval_fraction": 0.0}, train={"epochs": 1.5})
    )
    steps = {fit.key: fit.train.steps for fit in make_plan(spec, tmp_path).fits}
    assert steps == {"big": 15, "small": 3}  # ceil(1.5 * rows / batch_size 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"dataset": {"input": "body"}},
            r"dataset\.input: no column 'body' in .*columns: user_id, text, label",
        ),
        ({"dataset": {"group_by": "team"}, "name": "u-{team}"}, r"dataset\.group_by: no column 'team'"),
        ({"adapter": {"rank": 64}}, r"adapter\.rank must be below the model's hidden size 64, got 64"),
        ({"fits": [{"key": "2", "adapter": {"rank": 80}}]}, r"fits\[2\]\.adapter\.rank must be below"),
        ({"fits": [{"key": "99"}]}, r"fits\[99\]: no group user_id has the key '99'"),
        ({"name": "user {user_id}"}, r"name: template 'user \{user_id\}' gives 'user 0' for fit '0'"),
        ({"name": "all"}, r"name: fits '0' and '1' would both be named 'all'"),
        ({"base_model": "/nowhere/model"}, r"base_model: '/nowhere/model' is neither a folder"),
        ({"dataset": {"path": "/nowhere/*.jsonl"}}, r"dataset\.path: no data files match /nowhere/\*\.jsonl"),
    ],
)
def test_plan_refuses_a_spec_that_cannot_work(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], reviews: Path, change: dict[str, Any], message: str
) -> None:
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], reviews, **change))
    with pytest.raises(SpecError, match=message):
        make_plan(spec, tmp_path / "home")


def test_empty_groups_are_refused(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    rows = review_rows("u1", 4, 0) + [{"user_id": None, "text": "x", "label": "positive"}]
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], write_jsonl(tmp_path / "d.jsonl", rows)))
    with pytest.raises(
        SpecError, match=r"dataset\.group_by: 1 row\(s\) have an empty 'user_id' \(first: row 4\)"
    ):
        make_plan(spec, tmp_path)


def test_a_fit_without_usable_rows_is_planned_as_failed(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    rows = review_rows("ok", 6, 0) + [{"user_id": "blank", "text": "the food was", "label": None}] * 2
    rows += review_rows("tiny", 1, 0)
    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], write_jsonl(tmp_path / "d.jsonl", rows)))
    fits = make_plan(spec, tmp_path).by_key()
    assert fits["ok"].error is None
    assert fits["blank"].error == "no usable rows (2 row(s) lack an input or a target)"
    assert "too few" in (fits["tiny"].error or "")


def test_one_fit_per_file_and_explicit_fits_with_overrides(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    for user in ("alice", "bob", "carol"):
        write_jsonl(tmp_path / "users" / f"{user}.jsonl", review_rows(user, 5, 1))
    spec = JobSpec.from_dict(
        job_dict(
            tiny_model_dirs["llama"],
            tmp_path / "users" / "*.jsonl",
            dataset={"group_by": None, "per_file": True},
            name="{key}-v",
            fits=[
                {"key": "bob", "train": {"lr": 0.2}},
                {"key": "alice", "adapter": {"rank": 4}, "name": "al"},
            ],
        )
    )
    fits = make_plan(spec, tmp_path).fits
    assert [(f.key, f.name, f.adapter.rank, f.train.lr) for f in fits] == [
        ("bob", "bob-v", 2, 0.2),
        ("alice", "al", 4, 0.05),
    ]


def test_fits_with_their_own_data_or_the_shared_dataset(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    shared = write_jsonl(tmp_path / "shared.jsonl", review_rows("x", 6, 2))
    own = write_jsonl(tmp_path / "own.jsonl", review_rows("y", 8, 3))
    spec = JobSpec.from_dict(
        job_dict(
            tiny_model_dirs["llama"],
            shared,
            dataset={"group_by": None},
            fits=[
                {"key": "r2", "adapter": {"rank": 2}},
                {"key": "r8", "adapter": {"rank": 8}},
                {"key": "own", "path": str(own)},
            ],
            name="{key}",
        )
    )
    fits = make_plan(spec, tmp_path).by_key()
    assert fits["r2"].fingerprint == fits["r8"].fingerprint != fits["own"].fingerprint
    assert (fits["r8"].adapter.rank, len(fits["own"].train_rows) + len(fits["own"].eval_rows)) == (8, 8)


def test_csv_and_parquet_files_read_through_datasets(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    import pandas as pd

    rows = [r for u in ("a", "b") for r in review_rows(u, 5, 4)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    keys = set()
    for name in ("d.csv", "d.parquet"):
        spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], tmp_path / name))
        plan = make_plan(spec, tmp_path / "home")
        keys.add(tuple((f.key, f.fingerprint) for f in plan.fits))
    assert len(keys) == 1 and [k for k, _ in keys.pop()] == ["a", "b"]  # same rows, same fits


def test_relative_paths_become_absolute_for_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spec = JobSpec.from_dict(
        {
            "base_model": "./models/tiny",
            "dataset": {"path": ["data/*.jsonl", "s3://b/k.jsonl", "bigbench:x/y"]},
        }
    ).with_absolute_paths()
    assert spec.base_model == str(tmp_path / "models" / "tiny")
    assert spec.dataset.path == (str(tmp_path / "data" / "*.jsonl"), "s3://b/k.jsonl", "bigbench:x/y")
    named = JobSpec.from_dict(
        {"base_model": "smollm2-135m", "dataset": {"path": "d.jsonl"}}
    ).with_absolute_paths()
    assert named.base_model == "smollm2-135m"


def test_a_spec_naming_another_tenant_is_refused_before_anything_is_recorded(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], reviews: Path
) -> None:
    """The tenant is who submits (the client, or --tenant): a spec's `tenant:` may only agree with it."""
    import yaml
    from typer.testing import CliRunner

    from ulpt.cli import _register_commands, app

    spec = JobSpec.from_dict(job_dict(tiny_model_dirs["llama"], reviews))  # tenant: acme
    home = tmp_path / "home"
    with ulpt.Client(home=home, tenant="evil") as evil:
        with pytest.raises(SpecError, match="^tenant: the spec belongs to tenant 'acme' but is submitted by"):
            evil.jobs.submit(spec, start=False)
        assert evil.jobs.submit(JobSpec.from_dict({**spec.to_dict(), "tenant": None}), start=False).id
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.to_dict()))
    _register_commands()
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(
            app, ["train", str(spec_file), "--tenant", "evil", "--home", str(home), *extra]
        )
        assert isinstance(result.exception, SpecError), result.output  # `ulpt` prints it as one line
        assert "the spec belongs to tenant 'acme'" in str(result.exception)
    with ulpt.Client(home=home, tenant="acme") as acme, ulpt.Client(home=home, tenant="evil") as evil:
        assert acme.jobs.list() == [] and len(evil.jobs.list()) == 1


def test_the_filesystem_root_and_empty_files_are_refused_in_one_line(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """`path: /` would read every file of the machine; an empty file made `datasets` say 'StopIteration'."""
    model = tiny_model_dirs["llama"]
    for root in ("/", "/**/*.jsonl", "/tmp/../"):
        spec = JobSpec.from_dict(job_dict(model, Path("x"), dataset={"path": root}))
        with pytest.raises(SpecError, match="reaches the whole filesystem"):
            make_plan(spec, tmp_path / "home")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ulpt.UlptError, match=rf"^dataset\.path: {empty} is empty: a data file needs"):
        make_plan(JobSpec.from_dict(job_dict(model, empty)), tmp_path / "home")
    (tmp_path / "data").mkdir()
    write_reviews(tmp_path / "data" / "a.jsonl", users=2)
    (tmp_path / "data" / "notes.txt").write_text("not data")
    plan = make_plan(JobSpec.from_dict(job_dict(model, tmp_path / "data")), tmp_path / "home")
    assert plan.rows_read == 12  # the folder's data file, not the text file next to it
