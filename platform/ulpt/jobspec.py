"""`JobSpec`: one bulk training job (a base model, a dataset split into fits, how to train each fit).

The same object travels SDK / YAML -> catalog (JSON) -> Ray workers, and its shape is the YAML's
shape (one `model_validate` in, one `model_dump` out); every field has a default, a docstring, and
validation that names the field path. `docs/jobspec.schema.json` is generated from it:

    tenant: acme
    base_model: ./models/tiny            # a from_pretrained folder, or a known model name
    dataset: {path: data/reviews.jsonl, input: text, target: label, group_by: user_id, eval_fraction: 0.2}
    adapter: {method: ulpt, n_tokens: 10, rank: 2, seed: 1234, seed_policy: per_fit}
    train: {steps: 200, batch_size: 8}   # lr: the method's default; a list: a packed sweep per fit
    name: "user-{user_id}"
    tags: {project: demo}

Checks that need no data happen here; checks against the data and the model (columns, groups, adapter
names, rank below the hidden size) happen in `ulpt_jobs.plan`, still before anything runs.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from ulpt.adapters import AdapterSpec
from ulpt.catalog.names import check_name, check_tenant, normalize_tags
from ulpt.documents import load_yaml
from ulpt.errors import SpecError, shown
from ulpt.models.precision import TrainDtypeName
from ulpt.training import TrainConfig
from ulpt.training.config import MAX_EPOCHS
from ulpt.validation import NonBlank, SpecModel

FORMAT_VERSION: Final = 1
BIGBENCH_PREFIX = "bigbench:"
"""`bigbench:TASK` reads a BIG-bench task through `ulpt.data.load_task` instead of files."""
_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SEED_MASK = (1 << 63) - 1
MAX_FITS_PER_WORKER = 4096
"""Most fits one worker packs at once: each holds its parameters and AdamW state in the pack."""
MAX_ROWS_PER_FORWARD = 4096
"""Most rows in one forward pass of the base model: activations grow with it."""


def _as_tuple(value: Any) -> Any:
    """YAML writes one path as a string and several as a list; both become a tuple."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _key_as_str(value: Any) -> Any:
    """`key: 3` in YAML is the group value "3" (group values are compared as strings)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Paths = Annotated[tuple[NonBlank, ...], BeforeValidator(_as_tuple, json_schema_input_type=str | list[str])]
Column = Annotated[str, Field(min_length=1)]
Tags = Annotated[
    dict[str, str],
    BeforeValidator(normalize_tags, json_schema_input_type=dict[str, str | int | float] | list[str]),
]


class DatasetSpec(SpecModel):
    """Where the rows come from and how they split into fits."""

    path: Paths = ()
    """Data files for `datasets`: paths, globs, `s3://` URLs; or `bigbench:TASK`."""
    format: Literal["auto", "json", "csv", "parquet"] = "auto"
    """json, csv or parquet; auto picks it from the file extension."""
    input: Column = "input"
    """Column holding the model's input text."""
    target: Column = "target"
    """Column holding the text the model should produce (a label or free text)."""
    choices: Column | None = None
    """Optional column of candidate labels per row (multiple-choice accuracy)."""
    group_by: Column | None = None
    """One fit per distinct value of this column (e.g. user_id)."""
    per_file: bool = False
    """One fit per data file, keyed by the file name without its extension."""
    eval_fraction: float = Field(default=0.2, ge=0, lt=1)
    """Share of each fit's rows held out for evaluation (at least one row when positive)."""
    split_seed: int = Field(default=0, ge=0)
    """Seeds the deterministic train/eval split of every fit."""

    @model_validator(mode="after")
    def _one_way_to_split(self) -> DatasetSpec:
        if self.per_file and self.group_by:
            raise ValueError("group_by and per_file are exclusive: pick one way to split")
        if self.per_file and any(p.startswith(BIGBENCH_PREFIX) for p in self.path):
            raise ValueError("per_file needs files; bigbench: tasks are one fit each (use fits)")
        return self

    @property
    def splits(self) -> bool:
        """Whether the dataset itself defines the fits (by column or by file)."""
        return bool(self.group_by) or self.per_file

    def resolve_format(self, path: str) -> str:
        if self.format != "auto":
            return self.format
        suffix = Path(path.split("?")[0]).suffix.lower()
        if suffix == ".gz":
            suffix = Path(Path(path).stem).suffix.lower()
        if suffix not in _EXTENSIONS:
            raise SpecError(
                f"dataset.format: cannot tell the format of {path!r} from its extension; "
                "set json, csv or parquet"
            )
        return _EXTENSIONS[suffix]


class FitSpec(SpecModel):
    """One explicit fit: selects a group (or file), or names its own data; may override the job's settings."""

    key: Annotated[
        str,
        BeforeValidator(_key_as_str, json_schema_input_type=str | int),
        Field(min_length=1, max_length=256),
    ]
    """The group value (group_by), the file name (per_file), or any name when the fit brings its own data."""
    path: Paths = ()
    """This fit's own data (only when the job is not split by group_by or per_file); default: the job's."""
    adapter: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the job's adapter fields (method, n_tokens, rank, seed...)."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the job's training fields (steps, lr, batch_size... and epochs)."""
    name: Annotated[str, AfterValidator(check_name)] | None = None
    """This fit's adapter name (default: the job's name template)."""
    tags: Tags = Field(default_factory=dict)
    """Added to the job's tags for this fit's adapter."""


class JobAdapterSpec(AdapterSpec):
    """The job's `adapter:` section: every fit's AdapterSpec, and how each fit's seed is chosen."""

    seed_policy: Literal["shared", "per_fit"] = "shared"
    """shared: every adapter uses seed; per_fit: a seed derived from seed and the fit key."""


DEFAULT_CHECKPOINT_EVERY: Final = 25
DEFAULT_MAX_ATTEMPTS: Final = 3
JOB_ONLY_TRAIN_FIELDS: Final = ("checkpoint_every", "max_attempts")
"""`train:` fields of the job as a whole: how its workers save and retry, not how a fit learns."""


class JobTrainConfig(TrainConfig):
    """The job's `train:` section: every fit's TrainConfig, optionally a length in epochs, and how
    the job's workers checkpoint and retry fits."""

    epochs: float | None = Field(default=None, gt=0, le=MAX_EPOCHS)
    """If set, each fit trains ceil(epochs * train rows / batch_size) steps instead of steps."""
    checkpoint_every: int = Field(default=DEFAULT_CHECKPOINT_EVERY, ge=0, le=1_000_000)
    """Save every in-flight fit's state to the store every this many steps (one blob per worker's pack),
    so a fit whose worker dies resumes there and loses at most this many steps; 0 disables."""
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=1000)
    """A fit whose worker died while training it this many times is failed with the reason, and the
    job goes on without it."""


def max_attempts_of(spec: Mapping[str, Any]) -> int:
    """A recorded job spec's `train.max_attempts` (the default when absent): the cap both a job's
    driver and a trainer pool apply to fits whose worker died."""
    return int((spec.get("train") or {}).get("max_attempts") or DEFAULT_MAX_ATTEMPTS)


class JobSpec(SpecModel):
    """A bulk training job: many adapters of one base model, trained packed on Ray Train workers."""

    format_version: Literal[1] = FORMAT_VERSION
    """The spec format this ulpt reads and writes."""
    tenant: Annotated[str, AfterValidator(check_tenant)] | None = None
    """Owner of the job and its adapters; None: the client's tenant."""
    base_model: NonBlank
    """A `from_pretrained` folder or a known model name (e.g. smollm2-135m)."""
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    """The rows and how they split into fits (may stay empty when every fit names its own path)."""
    adapter: JobAdapterSpec = Field(default_factory=JobAdapterSpec)
    """Method, n_tokens, rank, seed and seed_policy of every adapter (overridable per fit)."""
    train: JobTrainConfig = Field(default_factory=JobTrainConfig)
    """Hyperparameters of every fit (overridable per fit)."""
    name: str = "{key}"
    """Adapter name template: {key}, {index}, and the group_by column (e.g. user-{user_id})."""
    tags: Tags = Field(default_factory=dict)
    """Tags of every adapter; values may use the same placeholders as name."""
    fits: tuple[FitSpec, ...] = Field(default=(), strict=False)
    """Explicit fits: select (and override) groups or files, or list fits with their own data."""
    job_name: str | None = Field(default=None, max_length=128)
    """A label for the job in `ulpt jobs list`."""
    num_workers: int = Field(default=1, ge=1, le=4096)
    """Ray Train workers; each loads the base model once and trains its fits packed."""
    cpus_per_worker: int = Field(default=1, ge=1, le=256)
    """CPUs (and torch threads) per worker."""
    use_gpu: bool = False
    """Give each worker a GPU (where Ray has them); the base model runs on it, else on the CPU."""
    gpus_per_worker: float = Field(default=1.0, gt=0, le=64)
    """GPUs Ray reserves per worker with use_gpu: a fraction (0.25: four workers share a GPU, each with
    its own copy of the base) or a whole number."""
    dtype: TrainDtypeName = "auto"
    """The frozen base model's dtype: auto (bfloat16 on a GPU that runs it natively, else float32),
    float32 or bfloat16 (float16 is refused: it would need loss scaling). Adapters always train in
    float32."""
    fits_per_worker: int = Field(default=64, ge=1, le=MAX_FITS_PER_WORKER)
    """How many fits a worker trains at once, packed in shared forward passes."""
    max_rows_per_forward: int = Field(default=64, ge=1, le=MAX_ROWS_PER_FORWARD)
    """Rows per forward/backward pass through the base model (bounds activation memory)."""
    max_failures: int = Field(default=3, ge=0, le=1000)
    """Worker-group restarts (a dead worker or node) before the job fails; unfinished fits are retried."""
    placement: Literal["dedicated", "pool"] = "dedicated"
    """dedicated: the job's own Ray Train run (num_workers, fits_per_worker, ...), started by its driver.
    pool: the standing trainer pool of its base model, dtype and device kind trains it, packed with the
    fits of every other pooled job of any tenant (`ulpt_jobs.pool`; docs/pools.md). Nothing starts a
    pool member for it yet, so a pooled job waits until one runs; dedicated stays the default until
    the rest of issue 31 (embedded pools for `ulpt serve`, `ulpt train` and the SDK) lands."""

    @field_validator("adapter", "train", mode="before")
    @classmethod
    def _widen_plain_sections(cls, value: Any) -> Any:
        """`JobSpec(adapter=AdapterSpec(...), train=TrainConfig(...))` reads like the YAML sections."""
        if isinstance(value, (AdapterSpec, TrainConfig)) and not isinstance(
            value, (JobAdapterSpec, JobTrainConfig)
        ):
            return value.model_dump()
        return value

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and not value.is_integer():
            raise SpecError(
                f"gpus_per_worker must be at most 1 or a whole number (as Ray's GPUs), got {value:g}"
            )
        return value

    @model_validator(mode="after")
    def _check_templates_and_fits(self) -> JobSpec:
        check_template("name", self.name, self.placeholders)
        for key, value in self.tags.items():
            check_template(f"tags.{key}", value, self.placeholders)
        seen: set[str] = set()
        for fit in self.fits:
            where = f"fits[{fit.key}]"
            if fit.key in seen:
                raise SpecError(f"fits: key {fit.key!r} appears twice")
            seen.add(fit.key)
            if fit.path and self.dataset.splits:
                raise SpecError(
                    f"{where}.path: a job split by group_by or per_file selects fits by key; "
                    "drop the path or the split"
                )
            if not fit.path and not self.dataset.path:
                raise SpecError(f"{where}.path: the fit names no data and dataset.path is empty")
            self.adapter_for(fit)
            self.train_for(fit)
        if not self.dataset.path and not self.fits:
            raise SpecError("dataset.path is required (or list fits that each name their own path)")
        return self

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Names a template may use: the fit key, its index, and the group_by column."""
        extra = (self.dataset.group_by,) if self.dataset.group_by else ()
        return ("key", "index", *extra)

    # ---- per-fit resolution --------------------------------------------------------------------

    def adapter_for(self, fit: FitSpec | None, key: str | None = None) -> AdapterSpec:
        """The adapter spec of one fit: the job's, its overrides, and the seed policy."""
        overrides = dict(fit.adapter) if fit else {}
        where = f"fits[{fit.key}].adapter" if fit else "adapter"
        merged = {**self.adapter.model_dump(exclude={"seed_policy"}), **overrides}
        spec = AdapterSpec.from_dict(merged, where=where)
        fit_key = key if key is not None else (fit.key if fit else None)
        if self.adapter.seed_policy == "per_fit" and "seed" not in overrides and fit_key is not None:
            spec = spec.model_copy(update={"seed": derive_seed(spec.seed, fit_key)})
        return spec

    def train_for(self, fit: FitSpec | None) -> tuple[TrainConfig, float | None]:
        """The training config of one fit and its epochs (None: train.steps)."""
        overrides = dict(fit.train) if fit else {}
        where = f"fits[{fit.key}].train" if fit else "train"
        for name in JOB_ONLY_TRAIN_FIELDS:
            if name in overrides:
                raise SpecError(f"{where}.{name}: set for the whole job (train.{name}), not per fit")
        merged = JobTrainConfig.from_dict({**self.train.model_dump(), **overrides}, where=where)
        return TrainConfig(**merged.model_dump(exclude={"epochs", *JOB_ONLY_TRAIN_FIELDS})), merged.epochs

    def owned_by(self, tenant: str) -> JobSpec:
        """This spec recorded under `tenant`, the caller's identity; a spec naming another is refused.

        A spec file is data anyone may hand over: its `tenant:` can confirm who submits, never change it.
        """
        tenant = check_tenant(tenant)
        if self.tenant is not None and self.tenant != tenant:
            raise SpecError(
                f"tenant: the spec belongs to tenant {self.tenant!r} but is submitted by {tenant!r}; "
                "remove tenant from the spec or submit as its tenant"
            )
        return self.model_copy(update={"tenant": tenant})

    # ---- files ---------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobSpec:
        """Read a YAML spec; its errors name the file (and the line, for YAML syntax)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read job spec {path}: {exc.strerror or exc}") from None
        data = load_yaml(text, str(path))
        try:
            return cls.from_dict(data if data is not None else {})
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    def with_absolute_paths(self, cwd: Path | None = None) -> JobSpec:
        """Local paths made absolute, so workers and a later `--resume` read the same files."""
        root = cwd or Path.cwd()
        base = Path(self.base_model).expanduser()
        base_model = str((root / base).resolve()) if (root / base).is_dir() else self.base_model
        dataset = self.dataset.model_copy(
            update={"path": tuple(_absolute(p, root) for p in self.dataset.path)}
        )
        fits = tuple(
            fit.model_copy(update={"path": tuple(_absolute(p, root) for p in fit.path)}) for fit in self.fits
        )
        return self.model_copy(update={"base_model": base_model, "dataset": dataset, "fits": fits})


def json_schema() -> dict[str, Any]:
    """JSON Schema of a job spec file, for editors and CI checks; `make schema` writes it to
    docs/jobspec.schema.json (a test keeps the published file equal to this)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **JobSpec.model_json_schema()}


def derive_seed(job_seed: int, key: str) -> int:
    """A fit's own seed: stable across machines and Python versions (SHA-256, not hash())."""
    digest = hashlib.sha256(f"ulpt-fit-seed:{job_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


def check_template(where: str, template: Any, allowed: tuple[str, ...]) -> None:
    """A `str.format` template using only `allowed` placeholders (no attribute or index access)."""
    if not isinstance(template, str) or not template:
        raise SpecError(f"{where} must be a non-empty template string, got {shown(template)}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError(f"{where}: invalid template {shown(template)}: {exc}") from None
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in allowed or spec or conversion:
            raise SpecError(
                f"{where}: unknown placeholder {{{field_name}}} in {shown(template)}; "
                f"use {', '.join('{' + a + '}' for a in allowed)}"
            )


def render(template: str, values: Mapping[str, Any]) -> str:
    return template.format_map({k: "" if v is None else v for k, v in values.items()})


def _absolute(path: str, root: Path) -> str:
    if "://" in path or path.startswith(BIGBENCH_PREFIX):
        return path
    return str((root / Path(path).expanduser()).absolute())
