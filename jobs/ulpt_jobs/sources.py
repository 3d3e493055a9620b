"""Reading a job's data through `datasets`: local files and globs, `s3://` objects, BIG-bench tasks.

S3 objects are downloaded once into `<ULPT_HOME>/cache/data/s3/` (re-fetched when their ETag changes)
with boto3, which the store already depends on; `AWS_ENDPOINT_URL` and the usual AWS variables apply.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

from ulpt.config import atomic_write_bytes, file_lock
from ulpt.errors import DataError, SpecError, first_line
from ulpt.jobspec import BIGBENCH_PREFIX, DatasetSpec

DATA_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".json.gz", ".jsonl.gz", ".csv.gz")
_GLOB_CHARS = "*?["
MAX_WALK = 100_000
"""Entries a folder or glob in dataset.path may hold; more means the path is broader than the data."""


def expand_paths(paths: Sequence[str], home: Path, where: str = "dataset.path") -> list[str]:
    """Concrete files for paths, globs and folders (sorted, deduplicated); a bigbench: path stays as is."""
    files: list[str] = []
    for path in paths:
        if path.startswith(BIGBENCH_PREFIX):
            if len(paths) != 1:
                raise SpecError(f"{where}: a bigbench: task cannot be combined with other paths")
            return [path]
        if path.startswith("s3://"):
            found = _s3_files(path, home)
        elif any(c in path for c in _GLOB_CHARS) or Path(path).is_dir():
            found = _walk(path, where)
        elif Path(path).is_file():
            found = [path]
        else:
            raise SpecError(f"{where}: {path} does not exist")
        if not found:
            raise SpecError(f"{where}: no data files match {path}")
        files += [f for f in found if f not in files]
    return files


def _walk(path: str, where: str) -> list[str]:
    """Data files under a folder or matching a glob, refusing the filesystem root and bounding the walk:
    `path: /` (or `/**`) would otherwise read every file of the machine before failing."""
    base = Path(path.split("*")[0].split("?")[0].split("[")[0] or ".").resolve()
    if base == Path(base.anchor):
        raise SpecError(f"{where}: {path} reaches the whole filesystem; name the data's own folder")
    pattern = path if any(c in path for c in _GLOB_CHARS) else os.path.join(glob.escape(path), "**", "*")
    folder = Path(path).is_dir()  # a folder keeps only data files; a glob keeps what it matches
    found = []
    for seen, name in enumerate(glob.iglob(pattern, recursive=True, include_hidden=True)):
        if seen >= MAX_WALK:
            raise SpecError(f"{where}: {path} holds over {MAX_WALK} entries; name a narrower folder or glob")
        if (name.endswith(DATA_EXTENSIONS) or not folder) and Path(name).is_file():
            found.append(name)
    return sorted(found)


def read_table(
    dataset: DatasetSpec, files: Sequence[str], home: Path, where: str = "dataset.path"
) -> Dataset:
    """All rows of `files` as one Dataset (a bigbench: path reads that task)."""
    if files and files[0].startswith(BIGBENCH_PREFIX):
        from ulpt.data import load_task

        return load_task(files[0][len(BIGBENCH_PREFIX) :], home=home)
    empty = [f for f in files if "://" not in f and os.path.getsize(f) == 0]
    if empty:  # the datasets library fails on them with a bare "StopIteration"
        raise DataError(f"{where}: {empty[0]} is empty: a data file needs at least one row")
    fmt = _one_format(dataset, files, where)
    out = _load(fmt, {"train": list(files)}, home, where)
    return out["train"]


def read_per_file(dataset: DatasetSpec, files: Sequence[str], home: Path) -> list[Dataset]:
    """One Dataset per file, in the order of `files`, in a single `load_dataset` call (one split each)."""
    fmt = _one_format(dataset, files, "dataset.path")
    out = _load(fmt, {f"f{i}": [f] for i, f in enumerate(files)}, home, "dataset.path")
    return [out[f"f{i}"] for i in range(len(files))]


def file_key(path: str) -> str:
    """A per-file fit's key: the file name without its data extension(s)."""
    name = Path(path).name
    for ext in sorted(DATA_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _one_format(dataset: DatasetSpec, files: Sequence[str], where: str) -> str:
    formats = {dataset.resolve_format(f) for f in files}
    if len(formats) > 1:
        raise SpecError(f"{where}: files mix formats ({', '.join(sorted(formats))}); use one per job")
    return formats.pop()


def _load(fmt: str, data_files: dict[str, list[str]], home: Path, where: str) -> DatasetDict:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        loaded = load_dataset(fmt, data_files=data_files, cache_dir=str(home / "cache" / "datasets"))
    except (ValueError, OSError, TypeError) as exc:
        raise DataError(f"{where}: cannot read the data files: {first_line(exc)}") from None
    except Exception as exc:  # datasets wraps parser errors (DatasetGenerationError and others)
        cause = exc.__cause__ or exc
        raise DataError(f"{where}: cannot read the data files: {first_line(cause)}") from None
    assert isinstance(loaded, DatasetDict)
    return loaded


def _s3_files(url: str, home: Path) -> list[str]:
    """Local copies of the objects `url` names (a key, a prefix ending in '/', or a glob)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise SpecError(f"dataset.path: invalid S3 URL {url!r}: expected s3://BUCKET/KEY")
    cut = min((key.find(c) for c in _GLOB_CHARS if c in key), default=-1)
    prefix = key if cut < 0 else key[:cut]
    client: Any = boto3.client("s3")
    try:
        listed: list[tuple[str, str]] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            listed += [(obj["Key"], obj["ETag"]) for obj in page.get("Contents", [])]
        if cut >= 0:
            wanted = [(k, e) for k, e in listed if fnmatch.fnmatchcase(k, key)]
        elif key.endswith("/") or not key:
            wanted = [(k, e) for k, e in listed if k.endswith(DATA_EXTENSIONS)]
        else:
            wanted = [(k, e) for k, e in listed if k == key]
        return [_s3_fetch(client, bucket, k, e, home) for k, e in sorted(wanted)]
    except (BotoCoreError, ClientError) as exc:
        raise DataError(f"dataset.path: cannot read {url}: {first_line(exc)}") from None


def _s3_fetch(client: Any, bucket: str, key: str, etag: str, home: Path) -> str:
    root = (home / "cache" / "data" / "s3").resolve()
    target = (root / bucket / key).resolve()
    if not target.is_relative_to(root / bucket):
        raise DataError(f"dataset.path: refusing S3 key {key!r}: it would leave the data cache")
    stamp = target.with_name(target.name + ".etag")
    with file_lock(target.with_name(target.name + ".lock")):
        if not (target.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == etag):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            atomic_write_bytes(target, body)
            atomic_write_bytes(stamp, json.dumps(etag).encode())
    return str(target)
