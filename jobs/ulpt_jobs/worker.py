"""The Ray Train worker: one frozen base model, a pack of fits kept full from the catalog, each fit
registered the moment it ends.

Work is not sharded up front: each worker claims pending fits from the catalog (an atomic update),
so a fast worker takes more and a restarted group picks up exactly the fits nobody finished.
Progress goes to the catalog, not through `ray.train.report`, which is a barrier across workers.
A worker never reads the job's dataset: it fetches the rows of each fit it claims from the store, where
the driver wrote them at submission under the fit's dataset fingerprint. Every `train.checkpoint_every`
steps it saves its whole pack (`ulpt_jobs.checkpoints`), and a fit claimed again resumes from there.
The pack itself (steps, checkpoints, registration) is `ulpt_jobs.pack`, shared with trainer pools.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ulpt.catalog.db import open_catalog
from ulpt.catalog.jobs import as_uuid, claim_fits
from ulpt.catalog.lifecycle import JobState, move_job
from ulpt.catalog.models import FitRow
from ulpt.errors import ConflictError, UlptError
from ulpt.jobspec import JobSpec
from ulpt.models import BaseModel, load_base_model
from ulpt.models.precision import require_cuda, resolve_dtype
from ulpt.models.shared import load_shared_base_model
from ulpt.registry import Registry
from ulpt.store import open_store
from ulpt.training import FitState
from ulpt_jobs import state
from ulpt_jobs.pack import PackRunner

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


class FitRunner(PackRunner):
    """Keeps up to `fits_per_worker` fits of one job stepping together until no pending fit is left."""

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
        super().__init__(
            model,
            registry,
            worker,
            device,
            max_rows_per_forward=spec.max_rows_per_forward,
            checkpoint_every=spec.train.checkpoint_every,
        )
        self.driver = driver
        self.job_id = job_id
        self.tenant = tenant
        self.spec = spec

    def slot(self, row: FitRow) -> str:
        return row.key  # one job per pack: its keys are unique, and its checkpoints keep their names

    def tenant_of(self, row: FitRow) -> str:
        return self.tenant

    def run(self) -> None:
        self.cpu_started = time.process_time()
        active: list[FitState] = []
        exhausted = False
        last_check = -math.inf
        while True:
            if time.monotonic() - last_check > STOP_CHECK_S:
                last_check = time.monotonic()
                if self._stopped():
                    # checkpointed and put back, so a resume trains them on from where they are
                    self.release(active, "stopped before it finished")
                    return
            if not exhausted and len(active) < self.spec.fits_per_worker:
                claimed = self._claim(self.spec.fits_per_worker - len(active))
                exhausted = not claimed
                active += self._prepare(claimed)
            if not active:
                if exhausted:
                    return
                continue
            active = self.step(active)

    def _claim(self, limit: int) -> list[FitRow]:
        with self.catalog.session() as session:
            return claim_fits(session, self.job_id, limit, self.worker)

    def _stopped(self) -> bool:
        with self.catalog.read() as session:
            return state.job_is_stopped(session, self.job_id, self.driver)


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
