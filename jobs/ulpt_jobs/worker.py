"""The Ray Train worker: one frozen base model, a pack of fits kept full from the catalog, each fit
registered the moment it ends.

Work is not sharded up front: each worker claims pending fits from the catalog (an atomic update),
so a fast worker takes more and a restarted group picks up exactly the fits nobody finished.
Progress goes to the catalog, not through `ray.train.report`, which is a barrier across workers.
A worker never reads the job's dataset: it fetches the rows of each fit it claims from the store, where
the driver wrote them at submission under the fit's dataset fingerprint. Every `train.checkpoint_every`
steps it saves its whole pack (`ulpt_jobs.checkpoints`), and a fit claimed again resumes from there.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ulpt.adapters import AdapterSpec
from ulpt.catalog.db import open_catalog
from ulpt.catalog.jobs import FitOutcome, as_uuid, claim_fits, mark_fit_failed, mark_fits_done, release_fits
from ulpt.catalog.lifecycle import JobState, move_job
from ulpt.catalog.models import FitRow
from ulpt.errors import CatalogError, ConflictError, MigrationRequiredError, StoreError, UlptError
from ulpt.jobspec import JobSpec
from ulpt.models import BaseModel, load_base_model
from ulpt.models.precision import require_cuda, resolve_dtype
from ulpt.models.shared import load_shared_base_model
from ulpt.registry import Registration, Registry
from ulpt.store import open_store
from ulpt.training import FitRequest, FitState, PackedTrainer, TrainConfig, sweep
from ulpt.training.api import fit_metrics, prepare_fit
from ulpt_jobs import state
from ulpt_jobs.checkpoints import PackCheckpoints
from ulpt_jobs.fit_data import read_fit_data

log = logging.getLogger(__name__)

STOP_CHECK_S = 0.5
"""How often a worker reads the job's status: a cancel stops it within this plus one pack step."""


@dataclass(frozen=True)
class WorkerConfig:
    """What the driver hands every worker (plain data: it crosses process boundaries)."""

    job_id: str
    catalog_url: str
    store_url: str
    store_options: Mapping[str, Any]
    driver: str | None = None
    """The driver that claimed the job: workers stop once another one took it over."""
    threads: int = 1
    shared_weights: Any = None
    """The base model in Ray's object store (`put_base_model`), or None: each worker reads the disk."""

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "store_options": dict(self.store_options)}


def train_loop(config: dict[str, Any]) -> None:
    """`train_loop_per_worker` of the job's Ray Train `DataParallelTrainer`."""
    import ray.train

    entered = time.time()
    cfg = WorkerConfig(**config)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(cfg.threads)
    catalog = open_catalog(cfg.catalog_url)
    registry = Registry(catalog, open_store(cfg.store_url, **cfg.store_options))
    with catalog.read() as session:
        job = state.job_status(session, cfg.job_id)
    spec = JobSpec.from_dict(job.spec)
    try:
        device = worker_device(spec.use_gpu)
    except UlptError as exc:  # failed, not raised: Ray Train would restart the workers into the same error
        with catalog.session() as session:
            move_job(session, as_uuid(cfg.job_id), JobState.FAILED, only=[JobState.RUNNING], error=str(exc))
        catalog.close()
        return
    model = base_model(spec, device, cfg.shared_weights)
    if rank == 0:  # a (re)started worker group: no other worker of this job is alive now
        with catalog.session() as session:
            state.reconcile(session, cfg.job_id)
        _record_base_model(registry, cfg.job_id, model)
    _barrier(context.get_world_size())
    ready = time.time()
    worker = f"{socket.gethostname()}:{os.getpid()}:rank{rank}"
    FitRunner(model, registry, job.id, job.tenant, spec, worker, device, driver=cfg.driver).run()
    if rank == 0:  # when the worker started and stopped, for the driver's account of the fixed costs
        stamps = {"worker_entered_at": entered, "worker_ready_at": ready, "worker_exited_at": time.time()}
        with catalog.session() as session:
            state.update_timings(session, cfg.job_id, **stamps)
    catalog.close()


def base_model(spec: JobSpec, device: torch.device, shared: Any | None) -> BaseModel:
    """The node's shared copy of the base when the driver put one in this worker's dtype, else the disk's."""
    dtype = resolve_dtype(spec.dtype, device)
    if shared is not None:
        import ray

        weights = ray.get(shared)
        if weights.dtype == str(dtype).removeprefix("torch."):
            return load_shared_base_model(weights, device=device)
        log.warning("shared weights are %s, this worker runs %s: loading from disk", weights.dtype, dtype)
    return load_base_model(spec.base_model, device=device, dtype=dtype)


def _record_base_model(registry: Registry, job_id: str, model: BaseModel) -> None:
    """Record the base model's weights fingerprint; weights that changed under a known name stop the job.

    The job is marked failed instead of raising: a raise would make Ray Train restart the workers
    (FailureConfig) into the same error. The other workers see the status and exit.
    """
    try:
        registry.record_base_model(
            model.name, model.hidden_size, revision=model.fingerprint, family=model.family
        )
    except ConflictError as exc:
        with registry.catalog.session() as session:
            move_job(session, as_uuid(job_id), JobState.FAILED, only=[JobState.RUNNING], error=str(exc))


class FitRunner:
    """Keeps up to `fits_per_worker` fits stepping together until no pending fit is left."""

    def __init__(
        self,
        model: BaseModel,
        registry: Registry,
        job_id: str,
        tenant: str,
        spec: JobSpec,
        worker: str,
        device: torch.device | None = None,
        *,
        driver: str | None = None,
    ) -> None:
        self.model = model
        self.driver = driver
        self.registry = registry
        self.catalog = registry.catalog
        self.job_id = job_id
        self.tenant = tenant
        self.spec = spec
        self.worker = worker
        self.device = device
        self.trainer = PackedTrainer(model, max_rows_per_forward=spec.max_rows_per_forward)
        self.rows: dict[str, FitRow] = {}
        self.candidates: dict[str, list[FitState]] = {}  # fit key -> its FitStates (several in a sweep)
        self.checkpoints = PackCheckpoints(self.catalog, registry.store, spec.train.checkpoint_every)
        self.resumed_from: dict[str, int] = {}  # fit key -> the step its checkpoint had reached
        self.cpu_started = time.process_time()

    def run(self) -> None:
        self.cpu_started = time.process_time()
        active: list[FitState] = []
        exhausted = False
        last_check = -math.inf
        while True:
            if time.monotonic() - last_check > STOP_CHECK_S:
                last_check = time.monotonic()
                if self._stopped():
                    self._release(active)
                    return
            if not exhausted and len(active) < self.spec.fits_per_worker:
                claimed = self._claim(self.spec.fits_per_worker - len(active))
                exhausted = not claimed
                active += self._prepare(claimed)
            if not active:
                if exhausted:
                    return
                continue
            ended = self.trainer.advance(active)
            settled = self._settled(ended)
            if settled:
                self._record(settled)
            self.checkpoints.step(self.candidates, self.rows)
            active = [f for f in active if f.status == "running"]

    # ---- catalog ---------------------------------------------------------------------------------

    def _claim(self, limit: int) -> list[FitRow]:
        with self.catalog.session() as session:
            rows = claim_fits(session, self.job_id, limit, self.worker)
        self.rows.update({row.key: row for row in rows})
        return rows

    def _stopped(self) -> bool:
        with self.catalog.read() as session:
            return state.job_is_stopped(session, self.job_id, self.driver)

    def _release(self, active: Sequence[FitState]) -> None:
        """A cancelled (or failed) job: checkpoint this worker's unfinished fits and put them back, so a
        resume trains them on from where they are."""
        if self.checkpoints.every:
            self.checkpoints.save(self.candidates, self.rows)
        with self.catalog.session() as session:
            ids = [self.rows[key].id for key in dict.fromkeys(fit.group for fit in active)]
            release_fits(session, ids, "stopped before it finished", worker=self.worker)

    def _prepare(self, claimed: Sequence[FitRow]) -> list[FitState]:
        """FitStates for claimed fits; a fit whose rows or spec cannot train is recorded failed now."""
        prepared, failed = [], {}
        for row in claimed:
            try:
                prepared.append((row, self._fit_states(row)))
            except UlptError as exc:
                if is_outage(exc):
                    raise
                failed[row.key] = str(exc)
        self.checkpoints.restore(prepared)
        self.resumed_from.update({row.key: max(f.step for f in fits) for row, fits in prepared})
        if failed:
            with self.catalog.session() as session:
                for key, error in failed.items():
                    mark_fit_failed(session, self.rows[key].id, error)
        return [fit for _, fits in prepared for fit in fits]

    def _fit_states(self, row: FitRow) -> list[FitState]:
        """The fit's FitState, or one per rate of its sweep (packed like any other fits)."""
        record = row.spec or {}
        fingerprint = record.get("dataset_fingerprint")
        if not fingerprint:
            raise UlptError(f"fit {row.key}: no rows were recorded for it at submission")
        train_rows, eval_rows = read_fit_data(self.registry.store, row.key, fingerprint)
        request = FitRequest(
            row.key,
            AdapterSpec.from_dict(record["adapter"]),
            train_rows,
            eval_rows,
            TrainConfig.from_dict(record["train"]),
        )
        fits = [prepare_fit(self.model, c, group=row.key) for c in sweep.expand(request)]
        if self.device is not None and self.device.type != "cpu":
            for fit in fits:
                fit.adapter.to(self.device)  # before its first step, where it joins a stack on that device
        self.candidates[row.key] = fits
        return fits

    def _settled(self, ended: Sequence[FitState]) -> list[FitState]:
        """Fits whose every candidate has ended, each as the one to register (a sweep's best)."""
        out = []
        for key in dict.fromkeys(fit.group for fit in ended):
            if all(f.status != "running" for f in self.candidates[key]):
                out.append(sweep.pick(self.candidates.pop(key)))
        return out

    def _record(self, ended: Sequence[FitState]) -> None:
        """Register finished fits (blobs, then one catalog transaction), then mark every ended fit."""
        adapter_ids, errors = self._register([f for f in ended if f.status == "done"])
        done = []
        with self.catalog.session() as session:
            for fit in ended:
                row, resumed_from = self.rows.pop(fit.key), self.resumed_from.pop(fit.key, 0)
                if fit.key in adapter_ids:
                    metrics = state.finite_json(fit_metrics(fit))
                    # the worker's so far: memory budgets, and CPU cost that contention does not distort
                    timings = {
                        "peak_rss_mb": _peak_rss_mb(),
                        "loop_cpu_s": self._loop_cpu_s(),
                        "base_weights": "shared" if self.model.shared_weights else "private",
                        "resumed_from_step": resumed_from,
                    }
                    done.append(FitOutcome(row.id, adapter_ids[fit.key], metrics, timings))
                else:
                    mark_fit_failed(session, row.id, errors.get(fit.key) or fit.error or "failed")
            mark_fits_done(session, done)  # one statement for all of them

    def _register(self, done: Sequence[FitState]) -> tuple[dict[str, str], dict[str, str]]:
        """({key: adapter id}, {key: error}): one batch, or fit by fit if the batch is refused."""
        if not done:
            return {}, {}
        items = {fit.key: self._registration(fit) for fit in done}
        try:
            records = self.registry.register_many(list(items.values()), tenant=self.tenant)
            return {key: record.id for key, record in zip(items, records)}, {}
        except UlptError as exc:
            if is_outage(exc):
                raise  # the catalog or store is down: the worker group restarts and retries
        ids, errors = {}, {}
        for key, item in items.items():
            try:
                ids[key] = self.registry.register(item, tenant=self.tenant).id
            except UlptError as exc:  # e.g. the name is an alias in this tenant: only this fit fails
                if is_outage(exc):
                    raise
                errors[key] = f"registration refused: {exc}"
        return ids, errors

    def _registration(self, fit: FitState) -> Registration:
        record = self.rows[fit.key].spec or {}
        metrics = {
            k: v for k, v in state.summary_metrics(fit_metrics(fit)).items() if state.is_finite_number(v)
        }
        return Registration(
            adapter=fit.adapter,
            name=record["name"],
            tags=record.get("tags") or {},
            metrics=metrics,
            dataset_fingerprint=record.get("dataset_fingerprint"),
            training_config={
                state.FIT_KEY: fit.key,
                **fit.config.to_dict(),
                **({"sweep": fit.sweep} if fit.sweep is not None else {}),
            },
            job_id=uuid.UUID(self.job_id),
        )

    def _loop_cpu_s(self) -> float:
        return round(time.process_time() - self.cpu_started, 3)


def is_outage(exc: UlptError) -> bool:
    """The catalog or store itself failing (retry the worker), as opposed to one fit's bad input."""
    return type(exc) in (CatalogError, StoreError) or isinstance(exc, MigrationRequiredError)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def worker_device(use_gpu: bool) -> torch.device:
    """The worker's GPU for a `use_gpu` job (an error when it has none: no silent CPU), else the CPU."""
    if not use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    return require_cuda(ray.train.torch.get_device(), "use_gpu: true")


def _barrier(world_size: int) -> None:
    """Wait for rank 0's reconcile before any worker claims (Ray Train's own barrier, no process group)."""
    if world_size > 1:
        import ray.train.collective

        ray.train.collective.barrier()
