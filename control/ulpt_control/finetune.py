"""OpenAI's fine-tuning for one adapter, as a job of one fit: the request -> a JobSpec, the job -> a
`fine_tuning.job` object. The fine-tuned model is the adapter's `name:version`, which the inference
app answers as `model` for the same tenant.

Rows: `{"prompt", "completion"}` train the prompt -> completion directly; chat `{"messages"}` train
the last assistant message on the earlier ones written as `role: content` lines then `assistant:`.
`hyperparameters` map to ulpt's: n_epochs -> train.epochs, batch_size, learning_rate_multiplier x the
method's measured rate; `extra_body={"ulpt": {...}}` sets the adapter and the steps directly.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ulpt.adapters import AdapterSpec
from ulpt.catalog.lifecycle import JobState
from ulpt.jobspec import JobSpec
from ulpt.training.config import MAX_BATCH_SIZE, MAX_EPOCHS
from ulpt.training.defaults import default_lr
from ulpt_control.views import fit_view, scrub_text
from ulpt_jobs.state import FitStatus, JobStatus

FINE_TUNE_TAG = "openai_fine_tuning"
STATUS = {
    JobState.PENDING: "queued",
    JobState.RUNNING: "running",
    JobState.DONE: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}
"""Our job states as OpenAI's fine-tuning job statuses."""


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters, strict as specs are (`n_epochs: true` is a mistake, not 1); the bounds
    are the job spec's (`ulpt.training.config`), so a refusal names the field the client sent."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    n_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | Literal["auto"] = Field(
        default="auto", description="Passes over the rows; auto: ulpt.steps"
    )
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] | Literal["auto"] = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] = "auto"


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """OpenAI's `method`: only supervised fine-tuning trains an adapter; `dpo` or `reinforcement`
    are refused (400) rather than silently trained as supervised."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


class UlptOptions(BaseModel):
    """`extra_body={"ulpt": {...}}`: the adapter and the length of the training."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["ulpt", "pt", "dpt", "lopt1", "lopt2"] = "ulpt"
    rank: int = Field(default=2, ge=1, le=1024)
    n_tokens: int = Field(default=10, ge=1, le=512)
    seed: int = Field(default=1234, ge=0, le=2**31 - 1)
    steps: int = Field(default=200, ge=1, le=100_000)
    lr: float | None = Field(default=None, gt=0, le=10)
    eval_fraction: float = Field(default=0.2, ge=0, lt=1)


class FineTuneRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(..., min_length=1, max_length=512)
    training_file: str = Field(..., max_length=64)
    suffix: str | None = Field(default=None, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")
    hyperparameters: Hyperparameters = Field(default_factory=lambda: Hyperparameters())
    method: Method | None = None
    validation_file: None = Field(
        default=None,
        description="Not offered: ulpt holds out `ulpt.eval_fraction` of the training rows instead.",
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)
    ulpt: UlptOptions = Field(default_factory=lambda: UlptOptions())

    @property
    def chosen_hyperparameters(self) -> Hyperparameters:
        """`method.supervised.hyperparameters` when given (OpenAI's newer form), else the top level."""
        inner = self.method.supervised if self.method is not None else None
        if inner is not None and inner.hyperparameters is not None:
            return inner.hyperparameters
        return self.hyperparameters


def training_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for row in rows:
        if "messages" in row:
            *context, last = row["messages"]
            lines = [f"{m['role']}: {m['content']}" for m in context]
            out.append({"input": "\n".join([*lines, "assistant:"]), "target": last["content"]})
        else:
            out.append({"input": row["prompt"], "target": row["completion"]})
    return out


def write_rows(rows: list[dict[str, str]], folder: Path) -> Path:
    path = folder / "training.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def job_spec(request: FineTuneRequest, data: Path) -> JobSpec:
    """One fit on `data`, its adapter named `ft-SUFFIX-RANDOM` (unique, a valid adapter name)."""
    options, hyper = request.ulpt, request.chosen_hyperparameters
    adapter: dict[str, Any] = {"method": options.method, "n_tokens": options.n_tokens, "rank": options.rank}
    adapter["seed"] = request.seed if request.seed is not None else options.seed
    train: dict[str, Any] = {"steps": options.steps, "eval_every": max(1, options.steps // 4)}
    if hyper.n_epochs != "auto":
        train["epochs"] = hyper.n_epochs
    if hyper.batch_size != "auto":
        train["batch_size"] = hyper.batch_size
    if options.lr is not None:
        train["lr"] = options.lr
    elif hyper.learning_rate_multiplier != "auto":
        train["lr"] = hyper.learning_rate_multiplier * default_lr(AdapterSpec(**adapter))
    name = f"ft-{request.suffix or 'model'}-{secrets.token_hex(4)}"
    return JobSpec.from_dict(
        {
            "base_model": request.model,
            "dataset": {"eval_fraction": options.eval_fraction},
            "fits": [{"key": "fine-tune", "path": str(data)}],
            "adapter": adapter,
            "train": train,
            "name": name,
            # tag values are name templates: an absent suffix (OpenAI's client default) has no tag
            "tags": {
                FINE_TUNE_TAG: "1",
                "training_file": request.training_file,
                **({"suffix": request.suffix} if request.suffix else {}),
            },
            "job_name": name,
        }
    )


def is_fine_tune(status: JobStatus) -> bool:
    return FINE_TUNE_TAG in (status.spec.get("tags") or {})


def job_object(status: JobStatus, fits: list[FitStatus]) -> dict[str, Any]:
    """A `fine_tuning.job` as OpenAI's client reads it."""
    spec, fit = status.spec, (fits[0] if fits else None)
    tags, train = spec.get("tags") or {}, spec.get("train") or {}
    state = STATUS[status.status]
    error = None
    if state == "failed":
        error = {
            "code": "training_failed",
            "message": scrub_text((fit.error if fit else None) or status.error or ""),
            "param": None,
        }
    return {
        "id": status.id,
        "object": "fine_tuning.job",
        "created_at": int(status.created_at.timestamp()),
        "finished_at": int(status.finished_at.timestamp()) if status.finished_at else None,
        "model": spec.get("base_model"),
        "fine_tuned_model": fit.adapter if fit is not None and state == "succeeded" else None,
        "organization_id": status.tenant,
        "status": state,
        "training_file": tags.get("training_file"),
        "validation_file": None,
        "result_files": [],
        "trained_tokens": None,
        "seed": (spec.get("adapter") or {}).get("seed"),
        "hyperparameters": {
            "n_epochs": train.get("epochs") or "auto",
            "batch_size": train.get("batch_size") or "auto",
            "learning_rate_multiplier": "auto",
        },
        "error": error,
        "user_provided_suffix": tags.get("suffix") or None,
        "metrics": fit_view(fit.to_dict())["metrics"] if fit is not None else {},
    }
