"""Stored specs stay readable and the published schema stays true: a job spec recorded in the catalog,
an adapter config inside a safetensors header and a serve config, each as written before the specs
became pydantic models, load into the models; `docs/jobspec.schema.json` equals the generated schema;
the README's job spec example is a valid spec."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

import ulpt
from ulpt.adapters.limits import spec_from_config
from ulpt.jobspec import FitSpec, JobSpec, derive_seed, json_schema
from ulpt_serving import ServeConfig

ROOT = Path(__file__).resolve().parents[1]

STORED_JOB = json.loads(
    '{"adapter": {"init": "normal", "method": "ulpt", "n_tokens": 4, "projection": "xavier_uniform", '
    '"rank": 2, "seed": 1234, "seed_policy": "per_fit", "use_scale": true, "use_shift": true}, '
    '"base_model": "/models/tiny", "cpus_per_worker": 1, "dataset": {"choices": null, "eval_fraction": 0.2, '
    '"format": "auto", "group_by": "user_id", "input": "text", "path": ["/data/reviews.jsonl"], '
    '"per_file": false, "split_seed": 0, "target": "label"}, "dtype": "auto", '
    '"fits": [{"key": "7", "tags": {"vip": "yes"}, "train": {"lr": 0.1}}], "fits_per_worker": 64, '
    '"format_version": 1, "job_name": "nightly", "max_failures": 3, "max_rows_per_forward": 64, '
    '"name": "user-{user_id}", "num_workers": 2, "tags": {"project": "demo"}, "tenant": "acme", '
    '"train": {"batch_size": 2, "early_stopping_patience": null, "epochs": 2, "eval_every": 50, "lr": 0.05, '
    '"max_eval_rows": 200, "max_grad_norm": 1.0, "seed": 0, "select_on": "auto", "steps": 8, '
    '"warmup_steps": null, "weight_decay": 1e-05}, "use_gpu": false}'
)
"""`JobSpec.to_dict()` of a job as the catalog stored it before the specs were pydantic models."""

STORED_ADAPTER_CONFIG = json.loads(
    '{"base_model": "tiny", "format_version": 1, "hidden_size": 16, "init": "normal", "method": "ulpt", '
    '"n_tokens": 3, "num_trainable_params": 38, "projection": {"distribution": "xavier_uniform", '
    '"fingerprint": "sha256:62304b697103bfe54de5ec17fd01d32fe3ec2c8adce05895ea93c7e2833fae9c", '
    '"generator": "torch.Generator(cpu)", "generator_version": 1}, "rank": 2, "seed": 5, '
    '"use_scale": true, "use_shift": true}'
)
"""The adapter_config of `Adapter.create(AdapterSpec(n_tokens=3, rank=2, seed=5), 16)` as written before."""


def test_a_stored_job_spec_loads_with_every_setting() -> None:
    spec = JobSpec.from_dict(STORED_JOB)
    assert spec.tenant == "acme" and spec.num_workers == 2 and spec.job_name == "nightly"
    assert spec.dataset.path == ("/data/reviews.jsonl",) and spec.dataset.group_by == "user_id"
    assert spec.adapter.seed_policy == "per_fit" and spec.train.epochs == 2
    assert spec.fits == (FitSpec(key="7", train={"lr": 0.1}, tags={"vip": "yes"}),)
    adapter = spec.adapter_for(spec.fits[0])
    assert adapter == ulpt.AdapterSpec(n_tokens=4, rank=2, seed=derive_seed(1234, "7"))
    train, epochs = spec.train_for(spec.fits[0])
    assert train == ulpt.TrainConfig(steps=8, lr=0.1, batch_size=2) and epochs == 2
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_stored_adapter_config_gives_the_spec_it_was_written_from() -> None:
    spec, hidden, projection = spec_from_config(STORED_ADAPTER_CONFIG)
    assert spec == ulpt.AdapterSpec(n_tokens=3, rank=2, seed=5) and hidden == 16
    assert projection is not None
    rebuilt = ulpt.Adapter.create(spec, hidden, base_model="tiny").config()
    assert rebuilt == STORED_ADAPTER_CONFIG  # the same seed regenerates the same fingerprint


def test_a_serve_config_round_trips_through_its_dict_form() -> None:
    config = ServeConfig(model="m", port=8001, hot_cache_count=10)
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["format_version"] == 1 and stored["port"] == 8001
    assert ServeConfig.from_dict(stored) == config


def test_specs_are_hashable_values() -> None:
    """Equal specs are interchangeable as dict keys (caches key adapters by their spec)."""
    keyed = {ulpt.AdapterSpec(seed=1): "a", ulpt.TrainConfig(steps=3): "t"}
    assert keyed[ulpt.AdapterSpec(seed=1)] == "a" and keyed[ulpt.TrainConfig(steps=3)] == "t"


def test_the_published_schema_is_the_generated_one() -> None:
    published = json.loads((ROOT / "docs" / "jobspec.schema.json").read_text())
    assert published == json_schema(), "the JobSpec model changed: run `make schema`"


def test_the_readme_job_spec_example_is_a_valid_spec() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n# job\.yaml\n(.*?)```", readme, re.S)
    assert block is not None
    spec = JobSpec.from_dict(yaml.safe_load(block.group(1)))
    assert spec.adapter.seed_policy == "per_fit" and spec.dataset.group_by == "user_id"
