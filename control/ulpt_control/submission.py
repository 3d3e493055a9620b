"""A job spec from the network, admitted only with what the service may read on the tenant's behalf.

A spec over HTTP is data from someone holding a key, not from an operator: its data paths may name
only the tenant's own uploaded files (`file-...`), BIG-bench tasks, or `s3://` URLs under the
prefixes the operator allowed; never a path on the service's disk. Its base model must be a known
name or one the operator listed; its workers fit the cluster's node types (`max_workers`,
`max_cpus_per_worker`, `gpu_workers`), since a job no node can place would wait forever. Specs are JSON or
YAML, parsed with bounded depth and alias expansion (`ulpt.documents`: plain data only).
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ulpt.catalog.files import FILE_ID
from ulpt.documents import load_json, load_yaml
from ulpt.errors import SpecError
from ulpt.jobspec import JobSpec
from ulpt.models.registry import KNOWN_MODELS
from ulpt.registry.files import Files
from ulpt_control.config import ControlConfig

BIGBENCH_PREFIX = "bigbench:"


def parse_spec(body: bytes, content_type: str) -> JobSpec:
    """A JobSpec from a JSON or YAML body (YAML when the content type says so, else JSON)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("the job spec is not UTF-8 text") from None
    if "yaml" in content_type.lower():
        data = load_yaml(text, "the job spec")
    else:
        data = load_json(body, "the job spec (send YAML as application/yaml)")
    if not isinstance(data, dict):
        raise SpecError("a job spec is a mapping of fields (see docs/jobspec.schema.json)")
    return JobSpec.from_dict(data)


def check_path(path: str, config: ControlConfig, where: str) -> None:
    if FILE_ID.fullmatch(path) or path.startswith(BIGBENCH_PREFIX):
        return
    if path.startswith("s3://"):
        normal = "s3://" + posixpath.normpath(path[len("s3://") :])
        if ".." not in path.split("/") and any(
            normal.startswith(p.rstrip("/") + "/") for p in config.data_prefixes
        ):
            return
        raise SpecError(f"{where}: this service reads no s3:// data outside its allowed prefixes")
    raise SpecError(f"{where}: give an uploaded file id (file-...), bigbench:TASK or an allowed s3:// URL")


def check_base_model(name: str, config: ControlConfig, field: str = "base_model") -> None:
    if name not in KNOWN_MODELS and name not in config.base_models:
        raise SpecError(f"{field}: not offered by this service; known: {', '.join(sorted(KNOWN_MODELS))}")


def check_spec(spec: JobSpec, config: ControlConfig) -> None:
    """Refuse what the service must not do for a caller; SpecError names the field."""
    check_base_model(spec.base_model, config)
    if spec.num_workers > config.max_workers:
        raise SpecError(f"num_workers: at most {config.max_workers} on this service")
    if spec.cpus_per_worker > config.max_cpus_per_worker:
        raise SpecError(
            f"cpus_per_worker: at most {config.max_cpus_per_worker}, the largest node of this cluster"
        )
    if spec.use_gpu and not config.gpu_workers:
        raise SpecError("use_gpu: this service's cluster has no GPU nodes; the job could never start")
    for path in spec.dataset.path:
        check_path(path, config, "dataset.path")
    for index, fit in enumerate(spec.fits):
        for path in fit.path:
            check_path(path, config, f"fits[{index}].path")


@contextmanager
def with_uploads(spec: JobSpec, files: Files) -> Iterator[JobSpec]:
    """The spec with each `file-...` path replaced by a local copy of the tenant's file, for the
    submission to read (once; fits' rows are then stored with the job, so the copies can go)."""
    with tempfile.TemporaryDirectory(prefix="ulpt-upload-") as folder:

        def local(path: str) -> str:
            if not FILE_ID.fullmatch(path):
                return path
            copy = Path(folder) / f"{path}.jsonl"
            if not copy.exists():
                copy.write_bytes(files.content(path))
            return str(copy)

        dataset = spec.dataset.model_copy(update={"path": tuple(local(p) for p in spec.dataset.path)})
        fits = tuple(f.model_copy(update={"path": tuple(local(p) for p in f.path)}) for f in spec.fits)
        yield spec.model_copy(update={"dataset": dataset, "fits": fits})
