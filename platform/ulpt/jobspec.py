"""`JobSpec`: one bulk training job (a base model, a dataset split into fits, how to train each fit).

The same object travels SDK / YAML -> catalog (JSON) -> Ray workers, so every field is plain data
with a default, a docstring, and validation that names the field:

    tenant: acme
    base_model: ./models/tiny            # a from_pretrained folder, or a known model name
    dataset: {path: data/reviews.jsonl, input: text, target: label, group_by: user_id, eval_fraction: 0.2}
    adapter: {method: ulpt, n_tokens: 10, rank: 2, seed: 1234, seed_policy: per_fit}
    train: {steps: 200, lr: 0.01, batch_size: 8}
    name: "user-{user_id}"
    tags: {project: demo}

Checks that need no data happen here; checks against the data and the model (columns, groups, adapter
names, rank below the hidden size) happen in `ulpt_jobs.plan`, still before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ulpt.adapters import AdapterSpec
from ulpt.catalog.names import check_name, check_tenant, normalize_tags
from ulpt.errors import SpecError
from ulpt.models.precision import check_dtype_name
from ulpt.training import TrainConfig
from ulpt.validation import check_number

FORMAT_VERSION = 1
FORMATS = ("auto", "json", "csv", "parquet")
SEED_POLICIES = ("shared", "per_fit")
BIGBENCH_PREFIX = "bigbench:"
"""`bigbench:TASK` reads a BIG-bench task through `ulpt.data.load_task` instead of files."""
_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class DatasetSpec:
    """Where the rows come from and how they split into fits."""

    path: tuple[str, ...] = ()
    """Data files for `datasets`: paths, globs, `s3://` URLs; or `bigbench:TASK`."""
    format: str = "auto"
    """json, csv or parquet; auto picks it from the file extension."""
    input: str = "input"
    """Column holding the model's input text."""
    target: str = "target"
    """Column holding the text the model should produce (a label or free text)."""
    choices: str | None = None
    """Optional column of candidate labels per row (multiple-choice accuracy)."""
    group_by: str | None = None
    """One fit per distinct value of this column (e.g. user_id)."""
    per_file: bool = False
    """One fit per data file, keyed by the file name without its extension."""
    eval_fraction: float = 0.2
    """Share of each fit's rows held out for evaluation (at least one row when positive)."""
    split_seed: int = 0
    """Seeds the deterministic train/eval split of every fit."""

    def __post_init__(self) -> None:
        paths = (self.path,) if isinstance(self.path, str) else self.path
        if not isinstance(paths, (tuple, list)) or not all(isinstance(p, str) and p.strip() for p in paths):
            raise SpecError(f"dataset.path must be a path or a list of paths, got {self.path!r}")
        object.__setattr__(self, "path", tuple(paths))
        if self.format not in FORMATS:
            raise SpecError(f"dataset.format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        for name in ("input", "target"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SpecError(f"dataset.{name} must be a column name, got {getattr(self, name)!r}")
        for name in ("choices", "group_by"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise SpecError(f"dataset.{name} must be a column name or null, got {value!r}")
        if not isinstance(self.per_file, bool):
            raise SpecError(f"dataset.per_file must be true or false, got {self.per_file!r}")
        if self.per_file and self.group_by:
            raise SpecError("dataset.group_by and dataset.per_file are exclusive: pick one way to split")
        check_number("dataset.eval_fraction", self.eval_fraction, ge=0, lt=1)
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise SpecError(f"dataset.split_seed must be a non-negative integer, got {self.split_seed!r}")
        if self.per_file and any(p.startswith(BIGBENCH_PREFIX) for p in self.path):
            raise SpecError("dataset.per_file needs files; bigbench: tasks are one fit each (use fits)")

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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = list(self.path)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        return cls(**_known(cls, data, "dataset"))


@dataclass(frozen=True)
class FitSpec:
    """One explicit fit: selects a group (or file), or names its own data; may override the job's settings."""

    key: str
    """The group value (group_by), the file name (per_file), or any name when the fit brings its own data."""
    path: tuple[str, ...] = ()
    """This fit's own data (only when the job is not split by group_by or per_file); default: the job's."""
    adapter: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the job's adapter fields (method, n_tokens, rank, seed...)."""
    train: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the job's training fields (steps, lr, batch_size... and epochs)."""
    name: str | None = None
    """This fit's adapter name (default: the job's name template)."""
    tags: Mapping[str, Any] = field(default_factory=dict)
    """Added to the job's tags for this fit's adapter."""

    def __post_init__(self) -> None:
        if isinstance(self.key, int) and not isinstance(self.key, bool):
            object.__setattr__(self, "key", str(self.key))
        if not isinstance(self.key, str) or not 1 <= len(self.key) <= 256:
            raise SpecError(f"fits: key must be a string of 1-256 characters, got {self.key!r}")
        paths = (self.path,) if isinstance(self.path, str) else self.path
        if not isinstance(paths, (tuple, list)) or not all(isinstance(p, str) and p for p in paths):
            raise SpecError(f"fits[{self.key}].path must be a path or a list of paths, got {self.path!r}")
        object.__setattr__(self, "path", tuple(paths))
        for section in ("adapter", "train", "tags"):
            if not isinstance(getattr(self, section), Mapping):
                raise SpecError(f"fits[{self.key}].{section} must be a mapping")
            object.__setattr__(self, section, dict(getattr(self, section)))
        if self.name is not None:
            _scoped(f"fits[{self.key}].name", lambda: check_name(self.name))
        _scoped(f"fits[{self.key}].tags", lambda: normalize_tags(self.tags))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        if self.path:
            out["path"] = list(self.path)
        for section in ("adapter", "train", "tags"):
            if getattr(self, section):
                out[section] = dict(getattr(self, section))
        if self.name is not None:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"fits: each fit must be a mapping with at least a key, got {data!r}")
        return cls(**_known(cls, data, "fits[]"))


@dataclass(frozen=True)
class JobSpec:
    """A bulk training job: many adapters of one base model, trained packed on Ray Train workers."""

    base_model: str
    """A `from_pretrained` folder or a known model name (e.g. smollm2-135m)."""
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    """The rows and how they split into fits (may stay empty when every fit names its own path)."""
    tenant: str | None = None
    """Owner of the job and its adapters; None: the client's tenant."""
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    """Method, n_tokens, rank and seed of every adapter (overridable per fit)."""
    seed_policy: str = "shared"
    """shared: every adapter uses adapter.seed; per_fit: a seed derived from adapter.seed and the fit key."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Hyperparameters of every fit (overridable per fit)."""
    epochs: float | None = None
    """If set, each fit trains ceil(epochs * train rows / batch_size) steps instead of train.steps."""
    name: str = "{key}"
    """Adapter name template: {key}, {index}, and the group_by column (e.g. user-{user_id})."""
    tags: Mapping[str, Any] = field(default_factory=dict)
    """Tags of every adapter; values may use the same placeholders as name."""
    fits: tuple[FitSpec, ...] = ()
    """Explicit fits: select (and override) groups or files, or list fits with their own data."""
    job_name: str | None = None
    """A label for the job in `ulpt jobs list`."""
    num_workers: int = 1
    """Ray Train workers; each loads the base model once and trains its fits packed."""
    cpus_per_worker: int = 1
    """CPUs (and torch threads) per worker."""
    use_gpu: bool = False
    """Give each worker a GPU (where Ray has them); the base model runs on it, else on the CPU."""
    dtype: str = "auto"
    """The frozen base model's dtype: auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16, float16.
    Adapters always train in float32."""
    fits_per_worker: int = 64
    """How many fits a worker trains at once, packed in shared forward passes."""
    max_rows_per_forward: int = 64
    """Rows per forward/backward pass through the base model (bounds activation memory)."""
    max_failures: int = 3
    """Worker-group restarts (a dead worker or node) before the job fails; unfinished fits are retried."""

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise SpecError(f"base_model must be a model folder or name, got {self.base_model!r}")
        self._accept_mappings()
        for name, kind in (("dataset", DatasetSpec), ("adapter", AdapterSpec), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), kind):
                raise SpecError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.tenant is not None:
            _scoped("tenant", lambda: check_tenant(self.tenant))
        if self.seed_policy not in SEED_POLICIES:
            raise SpecError(
                f"adapter.seed_policy must be one of {', '.join(SEED_POLICIES)}, got {self.seed_policy!r}"
            )
        _check_epochs("train.epochs", self.epochs)
        check_template("name", self.name, self.placeholders)
        if not isinstance(self.tags, Mapping):
            raise SpecError(f"tags must be a mapping, got {self.tags!r}")
        object.__setattr__(self, "tags", _scoped("tags", lambda: normalize_tags(self.tags)))
        for key, value in self.tags.items():
            check_template(f"tags.{key}", value, self.placeholders)
        if self.job_name is not None and (not isinstance(self.job_name, str) or len(self.job_name) > 128):
            raise SpecError(f"job_name must be a string of at most 128 characters, got {self.job_name!r}")
        _check_int("num_workers", self.num_workers, 1, 4096)
        _check_int("cpus_per_worker", self.cpus_per_worker, 1, 1024)
        _check_int("fits_per_worker", self.fits_per_worker, 1, 1_000_000)
        _check_int("max_rows_per_forward", self.max_rows_per_forward, 1, 1_000_000)
        _check_int("max_failures", self.max_failures, 0, 1000)
        if not isinstance(self.use_gpu, bool):
            raise SpecError(f"use_gpu must be true or false, got {self.use_gpu!r}")
        check_dtype_name("dtype", self.dtype)
        object.__setattr__(self, "fits", tuple(self.fits))
        self._check_fits()

    def _accept_mappings(self) -> None:
        """`JobSpec(dataset={...}, adapter={...}, train={...}, fits=[{...}])` reads like the YAML."""
        readers: dict[str, Any] = {"dataset": DatasetSpec, "adapter": AdapterSpec, "train": TrainConfig}
        for name, kind in readers.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                parsed = _scoped(name, lambda kind=kind, value=value: kind.from_dict(dict(value)))
                object.__setattr__(self, name, parsed)
        if isinstance(self.fits, (list, tuple)):
            fits = tuple(FitSpec.from_dict(f) if isinstance(f, Mapping) else f for f in self.fits)
            object.__setattr__(self, "fits", fits)

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Names a template may use: the fit key, its index, and the group_by column."""
        extra = (self.dataset.group_by,) if self.dataset.group_by else ()
        return ("key", "index", *extra)

    def _check_fits(self) -> None:
        seen: set[str] = set()
        for fit in self.fits:
            if not isinstance(fit, FitSpec):
                raise SpecError(f"fits must hold FitSpec entries, got {type(fit).__name__}")
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

    # ---- per-fit resolution --------------------------------------------------------------------

    def adapter_for(self, fit: FitSpec | None, key: str | None = None) -> AdapterSpec:
        """The adapter spec of one fit: the job's, its overrides, and the seed policy."""
        overrides = dict(fit.adapter) if fit else {}
        where = f"fits[{fit.key}].adapter" if fit else "adapter"
        merged = {**self.adapter.to_dict(), **overrides}
        spec: AdapterSpec = _scoped(where, lambda: AdapterSpec.from_dict(merged))
        fit_key = key if key is not None else (fit.key if fit else None)
        if self.seed_policy == "per_fit" and "seed" not in overrides and fit_key is not None:
            spec = dataclasses.replace(spec, seed=derive_seed(spec.seed, fit_key))
        return spec

    def train_for(self, fit: FitSpec | None) -> tuple[TrainConfig, float | None]:
        """The training config of one fit and its epochs (None: train.steps)."""
        overrides = dict(fit.train) if fit else {}
        epochs = overrides.pop("epochs", self.epochs)
        where = f"fits[{fit.key}].train" if fit else "train"
        _check_epochs(f"{where}.epochs", epochs)
        merged = {**self.train.to_dict(), **overrides}
        return _scoped(where, lambda: TrainConfig.from_dict(merged)), epochs

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
        return dataclasses.replace(self, tenant=tenant)

    # ---- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (the same keys `from_dict` and `from_yaml` read)."""
        train = self.train.to_dict()
        if self.epochs is not None:
            train["epochs"] = self.epochs
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "tenant": self.tenant,
            "base_model": self.base_model,
            "dataset": self.dataset.to_dict(),
            "adapter": {**self.adapter.to_dict(), "seed_policy": self.seed_policy},
            "train": train,
            "name": self.name,
            "tags": dict(self.tags),
            "fits": [fit.to_dict() for fit in self.fits],
        }
        for f in fields(self):
            if f.name not in out and f.name not in ("seed_policy", "epochs"):
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"a job spec must be a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise SpecError(f"format_version {version!r} is not supported (this ulpt reads {FORMAT_VERSION})")
        known = {f.name for f in fields(cls)} - {"seed_policy", "epochs"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown job field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for section in ("dataset", "adapter", "train"):
            if not isinstance(data.get(section, {}), Mapping):
                raise SpecError(f"{section} must be a mapping, got {data[section]!r}")
        if "base_model" not in data:
            raise SpecError("base_model is required: a model folder or a known model name")
        adapter = dict(data.pop("adapter", None) or {})
        seed_policy = adapter.pop("seed_policy", "shared")
        train = dict(data.pop("train", None) or {})
        epochs = train.pop("epochs", None)
        fits = data.pop("fits", None) or ()
        if not isinstance(fits, (list, tuple)):
            raise SpecError("fits must be a list of mappings, each with a key")
        return cls(
            dataset=DatasetSpec.from_dict(data.pop("dataset", None) or {}),
            adapter=_scoped("adapter", lambda: AdapterSpec.from_dict(adapter)),
            seed_policy=seed_policy,
            train=_scoped("train", lambda: TrainConfig.from_dict(train)),
            epochs=epochs,
            fits=tuple(FitSpec.from_dict(fit) for fit in fits),
            **data,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobSpec:
        """Read a YAML spec; its errors name the file (and the line, for YAML syntax)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SpecError(f"cannot read job spec {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpecError(f"{path}:{where}: invalid YAML: {problem}") from None
        try:
            return cls.from_dict(data if data is not None else {})
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    def with_absolute_paths(self, cwd: Path | None = None) -> JobSpec:
        """Local paths made absolute, so workers and a later `--resume` read the same files."""
        root = cwd or Path.cwd()
        base = Path(self.base_model).expanduser()
        base_model = str((root / base).resolve()) if (root / base).is_dir() else self.base_model
        dataset = dataclasses.replace(self.dataset, path=tuple(_absolute(p, root) for p in self.dataset.path))
        fits = tuple(
            dataclasses.replace(fit, path=tuple(_absolute(p, root) for p in fit.path)) for fit in self.fits
        )
        return dataclasses.replace(self, base_model=base_model, dataset=dataset, fits=fits)


def derive_seed(job_seed: int, key: str) -> int:
    """A fit's own seed: stable across machines and Python versions (SHA-256, not hash())."""
    digest = hashlib.sha256(f"ulpt-fit-seed:{job_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


def check_template(where: str, template: Any, allowed: tuple[str, ...]) -> None:
    """A `str.format` template using only `allowed` placeholders (no attribute or index access)."""
    if not isinstance(template, str) or not template:
        raise SpecError(f"{where} must be a non-empty template string, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError(f"{where}: invalid template {template!r}: {exc}") from None
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in allowed or spec or conversion:
            raise SpecError(
                f"{where}: unknown placeholder {{{field_name}}} in {template!r}; "
                f"use {', '.join('{' + a + '}' for a in allowed)}"
            )


def render(template: str, values: Mapping[str, Any]) -> str:
    return template.format_map({k: "" if v is None else v for k, v in values.items()})


def _absolute(path: str, root: Path) -> str:
    if "://" in path or path.startswith(BIGBENCH_PREFIX):
        return path
    return str((root / Path(path).expanduser()).absolute())


def _known(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise SpecError(f"{where} must be a mapping, got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dict(data)


_FIELD_FIRST = re.compile(r"[a-z_]+ (must|is|needs)\b")


def _scoped(where: str, check: Any) -> Any:
    """Run `check()`, prefixing a SpecError with the section it came from (train.lr must be ...)."""
    try:
        return check()
    except SpecError as exc:
        message = str(exc)
        if _FIELD_FIRST.match(message):
            raise SpecError(f"{where}.{message}") from None
        raise SpecError(f"{where}: {message}") from None


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_epochs(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e6:
        raise SpecError(f"{name} must be a positive number of epochs or null, got {value!r}")
