"""From a JobSpec to a list of fits with their rows: the checks that need the data and the model.

Only the driver plans: once, at submission, to validate the whole spec, create the fit rows and write
each fit's rows to the store as a blob keyed by its dataset fingerprint (`fit_data`). Workers never
read the dataset; they fetch the blobs of the fits they claim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from ulpt.adapters import AdapterSpec
from ulpt.catalog.names import check_name, normalize_tags
from ulpt.data import split_rows
from ulpt.errors import DataError, SpecError, UlptError
from ulpt.jobspec import FitSpec, JobSpec, render
from ulpt.training import FitRequest, TrainConfig, sweep
from ulpt_jobs.fit_data import dataset_fingerprint
from ulpt_jobs.sources import expand_paths, file_key, read_per_file, read_table

Row = dict[str, Any]


@dataclass(frozen=True)
class PlannedFit:
    """One fit, fully resolved: what the worker trains and what the catalog records."""

    key: str
    index: int
    name: str
    adapter: AdapterSpec
    train: TrainConfig
    tags: dict[str, str]
    train_rows: list[Row] = field(repr=False)
    eval_rows: list[Row] = field(repr=False)
    fingerprint: str | None
    error: str | None = None
    """Why this fit cannot run (no usable rows, too few to split); it is recorded failed at once."""

    def record(self) -> dict[str, Any]:
        """The fit's row in the catalog (`fits.spec`): everything but the rows themselves."""
        return {
            "name": self.name,
            "adapter": self.adapter.to_dict(),
            "train": self.train.to_dict(),
            "tags": self.tags,
            "dataset_fingerprint": self.fingerprint,
            "rows": {"train": len(self.train_rows), "eval": len(self.eval_rows)},
        }


@dataclass(frozen=True)
class Plan:
    spec: JobSpec
    hidden_size: int
    fits: list[PlannedFit]
    rows_read: int
    """Rows in the data files, before filtering out rows without input or target."""

    def by_key(self) -> dict[str, PlannedFit]:
        return {fit.key: fit for fit in self.fits}

    def row_steps(self) -> int:
        """The job's training work, as its tenant's quota counts it: rows x steps summed over the fits
        that will train (each candidate of a sweep trains its own)."""
        return sum(
            len(sweep.expand(FitRequest(f.key, f.adapter, f.train_rows, (), f.train)))
            * f.train.steps
            * f.train.batch_size
            for f in self.fits
            if f.error is None
        )

    def trainable(self) -> int:
        """Fits that will wait to train (the others are recorded failed at once)."""
        return sum(1 for f in self.fits if f.error is None)


def make_plan(spec: JobSpec, home: Path) -> Plan:
    """Read the data, split it into fits and check everything a job needs before it starts.

    Raises SpecError (naming the field) for a spec that cannot work as a whole; a single fit that
    cannot run (e.g. no usable rows) gets `error` instead, so it fails alone.
    """
    hidden = model_hidden_size(spec.base_model)
    for fit in (None, *spec.fits):
        where = f"fits[{fit.key}].adapter" if fit else "adapter"
        try:
            spec.adapter_for(fit).check_hidden_size(hidden)
        except SpecError as exc:
            raise SpecError(f"{where}.{exc}") from None
        adapter, (train, _) = spec.adapter_for(fit), spec.train_for(fit)
        for rank in train.rank or ():  # every candidate of a rank sweep must fit the model too
            try:
                adapter.model_copy(update={"rank": rank}).check_hidden_size(hidden)
            except SpecError as exc:
                raise SpecError(f"{where.replace('adapter', 'train')}.{exc} (a swept rank)") from None
    groups, rows_read = _groups(spec, home)
    if not groups:
        raise SpecError("dataset.path: the data has no rows")
    explicit = {fit.key: fit for fit in spec.fits}
    fits = [
        _plan_fit(spec, i, key, group, explicit.get(key)) for i, (key, group) in enumerate(groups.items())
    ]
    _check_names(spec, fits)
    return Plan(spec, hidden, fits, rows_read)


def model_hidden_size(base_model: str) -> int:
    """The hidden size from the model's config, without loading weights."""
    from transformers import AutoConfig

    from ulpt.models.registry import resolve_model_path

    try:
        path = resolve_model_path(base_model)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except UlptError as exc:
        raise SpecError(f"base_model: {exc}") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"base_model: {base_model} is not a loadable model folder ({exc})") from None
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if not isinstance(hidden, int):
        raise SpecError(f"base_model: cannot tell the hidden size of {base_model} from its config")
    return hidden


@dataclass
class _Group:
    rows: list[Row]
    dropped: int
    values: dict[str, Any]


def _groups(spec: JobSpec, home: Path) -> tuple[dict[str, _Group], int]:
    """{fit key: its rows} in a deterministic order, and the number of rows read."""
    ds = spec.dataset
    if ds.group_by:
        files = expand_paths(ds.path, home)
        table = read_table(ds, files, home)
        _check_columns(spec, table, _describe(files))
        groups = _split_by_column(spec, table)
        rows_read = len(table)
    elif ds.per_file:
        files = expand_paths(ds.path, home)
        keys = [file_key(f) for f in files]
        for key in set(keys):
            if keys.count(key) > 1:
                first, second = [f for f, k in zip(files, keys) if k == key][:2]
                raise SpecError(f"dataset.per_file: {first} and {second} both give the fit key {key!r}")
        tables = read_per_file(ds, files, home)
        groups, rows_read = {}, 0
        for key, path, table in sorted(zip(keys, files, tables)):
            _check_columns(spec, table, path)
            rows, dropped = _rows(spec, table.to_dict())
            groups[key] = _Group(rows, dropped, {"key": key})
            rows_read += len(table)
    else:
        groups, rows_read = _explicit_groups(spec, home)
    if spec.fits and ds.splits:
        missing = [fit.key for fit in spec.fits if fit.key not in groups]
        if missing:
            what = f"group {ds.group_by}" if ds.group_by else "data file"
            raise SpecError(f"fits[{missing[0]}]: no {what} has the key {missing[0]!r}")
        groups = {fit.key: groups[fit.key] for fit in spec.fits}
    return groups, rows_read


def _explicit_groups(spec: JobSpec, home: Path) -> tuple[dict[str, _Group], int]:
    """Fits that bring their own data (or share the job's dataset), or the whole dataset as one fit."""
    fits = spec.fits or (FitSpec(key=_default_key(spec.dataset.path)),)
    cache: dict[tuple[str, ...], tuple[list[Row], int, int]] = {}
    groups: dict[str, _Group] = {}
    rows_read = 0
    for fit in fits:
        paths = fit.path or spec.dataset.path
        if paths not in cache:
            where = f"fits[{fit.key}].path" if fit.path else "dataset.path"
            files = expand_paths(paths, home, where)
            table = read_table(spec.dataset, files, home, where)
            _check_columns(spec, table, _describe(files))
            rows, dropped = _rows(spec, table.to_dict())
            cache[paths] = (rows, dropped, len(table))
            rows_read += len(table)
        rows, dropped, _ = cache[paths]
        groups[fit.key] = _Group(rows, dropped, {"key": fit.key})
    return groups, rows_read


def _default_key(paths: Sequence[str]) -> str:
    if len(paths) == 1:
        return file_key(paths[0].rsplit(":", 1)[-1].rstrip("/")) or "all"
    return "all"


def _describe(files: Sequence[str]) -> str:
    return files[0] if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more files)"


def _check_columns(spec: JobSpec, table: Dataset, where: str) -> None:
    ds = spec.dataset
    columns = list(table.column_names)
    for name in ("input", "target", "choices", "group_by"):
        column = getattr(ds, name)
        if column is not None and column not in columns:
            raise SpecError(f"dataset.{name}: no column {column!r} in {where}; columns: {', '.join(columns)}")


def _split_by_column(spec: JobSpec, table: Dataset) -> dict[str, _Group]:
    column = spec.dataset.group_by
    assert column is not None
    data = table.to_dict()
    values = data[column]
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        raise SpecError(
            f"dataset.group_by: {len(empty)} row(s) have an empty {column!r} (first: row {empty[0]}); "
            "every row must belong to a group"
        )
    order: dict[str, list[int]] = {}
    raw: dict[str, Any] = {}
    for i, value in enumerate(values):
        key = str(value)
        order.setdefault(key, []).append(i)
        raw.setdefault(key, value)
    groups = {}
    for key in sorted(order, key=_natural):
        subset = {name: [col[i] for i in order[key]] for name, col in data.items()}
        rows, dropped = _rows(spec, subset)
        groups[key] = _Group(rows, dropped, {"key": key, column: raw[key]})
    return groups


def _natural(key: str) -> tuple[int, int | str]:
    """Numeric keys in numeric order (user 2 before user 10), then the rest as text."""
    return (0, int(key)) if key.isascii() and key.isdigit() else (1, key)  # '²' is a digit int() refuses


def _rows(spec: JobSpec, columns: Mapping[str, list[Any]]) -> tuple[list[Row], int]:
    """Rows as {input, target, choices} strings; rows missing input or target are dropped and counted."""
    ds = spec.dataset
    inputs, targets = columns[ds.input], columns[ds.target]
    choice_column = ds.choices or ("choices" if "choices" in columns else None)
    choices = columns[choice_column] if choice_column else None
    rows, dropped = [], 0
    for i, (text, target) in enumerate(zip(inputs, targets)):
        if text is None or target is None or not str(target).strip() or not str(text):
            dropped += 1
            continue
        row: Row = {"input": str(text), "target": str(target)}
        options = choices[i] if choices is not None else None
        row["choices"] = [str(c) for c in options] if isinstance(options, (list, tuple)) else []
        rows.append(row)
    return rows, dropped


def _plan_fit(spec: JobSpec, index: int, key: str, group: _Group, fit: FitSpec | None) -> PlannedFit:
    adapter = spec.adapter_for(fit, key)
    train, epochs = spec.train_for(fit)
    values = {**group.values, "index": index}
    name = fit.name if fit and fit.name else render(spec.name, values)
    tags = {k: render(v, values) for k, v in spec.tags.items()}
    if fit:
        tags.update(normalize_tags(fit.tags))
    error: str | None = None
    train_rows: list[Row] = []
    eval_rows: list[Row] = []
    if not group.rows:
        error = f"no usable rows ({group.dropped} row(s) lack an input or a target)"
    else:
        try:
            train_rows, eval_rows, _ = split_rows(
                group.rows, spec.dataset.eval_fraction, 0.0, spec.dataset.split_seed
            )
        except DataError as exc:
            error = str(exc)
    if epochs is not None and train_rows:
        train = train.model_copy(
            update={"steps": max(1, math.ceil(epochs * len(train_rows) / train.batch_size))}
        )
    fingerprint = dataset_fingerprint(train_rows, eval_rows) if error is None else None
    return PlannedFit(key, index, name, adapter, train, tags, train_rows, eval_rows, fingerprint, error)


def _check_names(spec: JobSpec, fits: Sequence[PlannedFit]) -> None:
    seen: dict[str, str] = {}
    for fit in fits:
        try:
            check_name(fit.name)
        except SpecError:
            raise SpecError(
                f"name: template {spec.name!r} gives {fit.name!r} for fit {fit.key!r}, which is not a valid "
                "adapter name (1-128 letters, digits, '.', '_', '-', not starting with . _ -)"
            ) from None
        if fit.name in seen:
            raise SpecError(
                f"name: fits {seen[fit.name]!r} and {fit.key!r} would both be named {fit.name!r}; "
                "use {key} in the name template"
            )
        seen[fit.name] = fit.key
        try:
            normalize_tags(fit.tags)
        except SpecError as exc:
            raise SpecError(f"tags: {exc} (fit {fit.key!r})") from None
