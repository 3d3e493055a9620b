"""A trainer pool member: a Ray actor that loads one base model once and trains the fits of any pooled
job of any tenant for that base, dtype and device kind, packed into the same forward passes.

Its loop, between two packed steps: claim up to its free room (`claim_fits_fairly`: weighted fair
between tenants), admit the claimed fits into the running stacks, take one step of the whole pack
(`PackRunner.step`: checkpoint every K steps, register the fits that ended, mark them), settle the jobs
whose last fit ended; and every `STOP_CHECK_S`, renew its leases (dropping fits it lost), retire the
fits of jobs that were cancelled or failed (checkpointed and given back, as a job's worker does on a
cancel), and requeue the fits of any member whose lease ran out. It stops when told (`stop`) or once
idle past `PoolSettings.idle_s`. Job state lives only in the catalog: a killed member loses its
leases, and its fits resume from their checkpoints on another member (at most K steps lost each).

Which jobs it trains: those submitted with `placement: pool` (`pool_key_of` names their pool). See
docs/pools.md for what is built and what is still design (scaling, preemption, quotas).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy import select

from ulpt.catalog.db import open_catalog
from ulpt.catalog.lifecycle import JOB_TERMINAL
from ulpt.catalog.models import FitRow, JobRow
from ulpt.catalog.pools import (
    MemberReport,
    PoolKey,
    beat_member,
    claim_fits_fairly,
    leave_pool,
    renew_leases,
    requeue_expired_leases,
    settle_jobs,
)
from ulpt.jobspec import JobSpec
from ulpt.models import BaseModel, load_base_model
from ulpt.models.precision import planned_dtype
from ulpt.registry import Registry
from ulpt.store import open_store
from ulpt.training import FitState
from ulpt_jobs.pack import PackRunner

STOP_CHECK_S = 0.5
"""How often a member renews its leases, reads its jobs' statuses and requeues expired leases: a cancel
is obeyed within this plus one pack step and its checkpoint."""
IDLE_POLL_S = 0.2
"""How long an idle member waits between claims."""
STEPS_KEPT = 1000
"""The latest steps' packing records a member keeps for `stats` (older ones are dropped)."""


@dataclass(frozen=True)
class PoolSettings:
    """How one member packs, checkpoints and holds its fits (plain data: it crosses to the actor)."""

    capacity: int = 64
    """Fits trained at once (a sweep's candidates count as one fit)."""
    max_rows_per_forward: int = 64
    checkpoint_every: int = 25
    """Pack steps between checkpoints: a killed member costs each of its fits at most this many steps."""
    lease_s: float = 30.0
    """A claimed fit's lease, renewed every STOP_CHECK_S; once past, any member requeues it."""
    idle_s: float | None = 60.0
    """Stop after this long with nothing to train (None: run until told)."""
    threads: int = 1


def pool_key_of(spec: JobSpec) -> PoolKey:
    """The pool a job placed in a pool belongs to: its base model, dtype and device kind, named the same
    on a submitting machine without a GPU as on the GPU members that train it."""
    device = "cuda" if spec.use_gpu else "cpu"
    return PoolKey(spec.base_model, planned_dtype(spec.dtype, spec.use_gpu), device)


@dataclass
class PackRecord:
    """One packed step of a member: what shared its forward passes."""

    jobs: list[str]
    tenants: list[str]
    fits: int
    forwards: int
    rows: int
    at: float = field(default_factory=time.time)


class PoolRunner(PackRunner):
    """A pool member's pack: fits of many jobs and tenants, claimed fairly, admitted between steps."""

    def __init__(
        self,
        model: BaseModel,
        registry: Registry,
        pool: PoolKey,
        member: str,
        settings: PoolSettings,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(
            model,
            registry,
            member,
            device,
            max_rows_per_forward=settings.max_rows_per_forward,
            checkpoint_every=settings.checkpoint_every,
        )
        self.pool = pool
        self.settings = settings
        self.tenants: dict[uuid.UUID, str] = {}  # job id -> tenant, for the fits this member holds
        self.steps: deque[PackRecord] = deque(maxlen=STEPS_KEPT)
        self.stepped = 0
        self.stopping = threading.Event()
        self.hold_at_boundary = threading.Event()
        self.held = threading.Event()

    def slot(self, row: FitRow) -> str:
        return f"{row.job_id}/{row.key}"  # keys are unique within a job only

    def tenant_of(self, row: FitRow) -> str:
        return self.tenants[row.job_id]

    def run(self) -> str:
        """Train until told to stop ("stopped") or idle past the bound ("idle"); then leave the pool."""
        try:
            return self._loop()
        finally:
            with self.catalog.session() as session:
                leave_pool(session, self.worker)

    def _loop(self) -> str:
        self.cpu_started = time.process_time()
        active: list[FitState] = []
        idle_since, last_check = time.monotonic(), -math.inf
        while not self.stopping.is_set():
            if self.hold_at_boundary.is_set():
                self.held.set()
                self.stopping.wait(IDLE_POLL_S)
                continue
            if time.monotonic() - last_check > STOP_CHECK_S:
                last_check = time.monotonic()
                active = self._housekeeping(active)
            if len(self.rows) < self.settings.capacity:
                active += self._admit(self.settings.capacity - len(self.rows))
            if not active:
                if self.settings.idle_s is not None and time.monotonic() - idle_since > self.settings.idle_s:
                    return "idle"
                self.stopping.wait(IDLE_POLL_S)
                continue
            idle_since = time.monotonic()
            active = self._step_recorded(active)
        self.release(active, "its pool member stopped")
        self.forget(list(self.rows))
        return "stopped"

    def report(self) -> MemberReport:
        """Its fits and its last step's packing, for its heartbeat row (`ulpt pools list`)."""
        last = self.steps[-1] if self.steps else None
        forwards = last.forwards if last and last.forwards else 0
        return MemberReport(
            fits=len(self.rows),
            steps=self.stepped,
            fits_per_forward=round(last.fits / forwards, 3) if last and forwards else 0.0,
            rows_per_forward=round(last.rows / forwards, 3) if last and forwards else 0.0,
        )

    def progress(self) -> dict[str, int]:
        """{slot: the step its fit reached} for every fit this member holds (safe from another thread:
        the copy is one C-level call, which the loop's thread cannot interleave with)."""
        return {slot: max(f.step for f in fits) for slot, fits in list(self.candidates.items())}

    # ---- between steps -----------------------------------------------------------------------------

    def _admit(self, room: int) -> list[FitState]:
        with self.catalog.session() as session:
            claimed = claim_fits_fairly(session, self.pool, self.worker, room, self.settings.lease_s)
            if claimed:
                jobs = {fit.job_id for fit in claimed} - set(self.tenants)
                if jobs:
                    rows = session.execute(select(JobRow.id, JobRow.tenant).where(JobRow.id.in_(jobs)))
                    self.tenants.update({job_id: tenant for job_id, tenant in rows})
        admitted = self._prepare(claimed)
        refused = {row.job_id for row in claimed if self.slot(row) not in self.rows}
        if refused:  # fits whose rows or spec could not train were failed: their job may have ended
            with self.catalog.session() as session:
                settle_jobs(session, refused)
        return admitted

    def _housekeeping(self, active: list[FitState]) -> list[FitState]:
        """Renew leases (dropping fits requeued meanwhile), retire the fits of ended jobs, requeue others'."""
        with self.catalog.session() as session:
            held = renew_leases(session, self.worker, self.settings.lease_s)
            beat_member(session, self.pool, self.worker, self.report())
            jobs = {row.job_id for row in self.rows.values()}
            ended = set(
                session.scalars(
                    select(JobRow.id).where(
                        JobRow.id.in_(jobs), JobRow.status.in_([s.value for s in JOB_TERMINAL])
                    )
                )
            )
            requeue_expired_leases(session, self.pool)
        lost = [slot for slot, row in self.rows.items() if row.id not in held]
        self.forget(lost)
        retired = [f for f in active if f.group in self.rows and self.rows[f.group].job_id in ended]
        if retired:  # cancelled (or failed): checkpointed and given back, so a resume goes on from there
            self.release(retired, "its job stopped before it finished")
            self.forget(list(dict.fromkeys(f.group for f in retired)))
        held_jobs = {row.job_id for row in self.rows.values()}
        self.tenants = {job: tenant for job, tenant in self.tenants.items() if job in held_jobs}
        return [f for f in active if f.group in self.rows]

    def _step_recorded(self, active: list[FitState]) -> list[FitState]:
        """One packed step, with what shared its forward passes."""
        forwards, rows = self.trainer.forwards, self.trainer.rows_forwarded
        jobs = {self.rows[f.group].job_id for f in active}
        record = PackRecord(
            jobs=sorted(str(job) for job in jobs),
            tenants=sorted({self.tenants[job] for job in jobs}),
            fits=len({f.group for f in active}),
            forwards=0,
            rows=0,
        )
        active = self.step(active)
        record.forwards, record.rows = self.trainer.forwards - forwards, self.trainer.rows_forwarded - rows
        self.steps.append(record)
        self.stepped += 1
        return active

    def _record(self, ended: Sequence[FitState]) -> None:
        """Register and mark the fits that ended, then end the jobs they were the last open fits of.

        Leases are renewed first: a fit requeued meanwhile (this member stalled past its lease) may be
        training elsewhere, so it is dropped here instead of registered twice.
        """
        with self.catalog.session() as session:
            held = renew_leases(session, self.worker, self.settings.lease_s)
        self.forget([f.key for f in ended if self.rows[f.key].id not in held])
        ended = [f for f in ended if f.key in self.rows]
        jobs = {self.rows[f.key].job_id for f in ended}
        super()._record(ended)
        with self.catalog.session() as session:
            settle_jobs(session, jobs)


class PoolMember:
    """One member of a pool, as a Ray actor: `run` trains until stopped or idle (call it once, it
    blocks); `stop`, `stats` and `hold` answer meanwhile (a threaded actor)."""

    def __init__(
        self,
        pool: PoolKey,
        catalog_url: str,
        store_url: str,
        store_options: Mapping[str, Any],
        settings: PoolSettings,
    ) -> None:
        torch.set_num_threads(settings.threads)
        self.catalog = open_catalog(catalog_url)
        registry = Registry(self.catalog, open_store(store_url, **store_options))
        device = torch.device(pool.device)
        model = load_base_model(pool.base_model, device=device, dtype=pool.dtype)  # once per member
        registry.record_base_model(
            model.name, model.hidden_size, revision=model.fingerprint, family=model.family
        )
        member = f"{socket.gethostname()}:{os.getpid()}:pool-{secrets.token_hex(3)}"
        self.runner = PoolRunner(model, registry, pool, member, settings, device)

    def run(self) -> str:
        return self.runner.run()

    def stop(self) -> None:
        """Finish the step in flight, checkpoint and give back the fits held, and return from `run`."""
        self.runner.stopping.set()

    def hold(self) -> dict[str, int]:
        """Stop stepping at the next step boundary (holding leases that run out); each fit's step there."""
        self.runner.hold_at_boundary.set()
        self.runner.held.wait()
        return self.runner.progress()

    def stats(self) -> dict[str, Any]:
        """The member's name, each step's packing (jobs, tenants, fits, forwards, rows), its fits' steps."""
        runner = self.runner
        return {
            "member": runner.worker,
            "steps": [record.__dict__ for record in list(runner.steps)],  # the latest STEPS_KEPT
            "progress": runner.progress(),
        }


def start_member(
    pool: PoolKey,
    catalog_url: str,
    store_url: str,
    store_options: Mapping[str, Any] | None = None,
    settings: PoolSettings | None = None,
) -> Any:
    """Start one member actor on the connected Ray cluster; call `.run.remote()` on it to train."""
    import ray

    settings = settings or PoolSettings()
    actor = ray.remote(PoolMember).options(
        num_cpus=settings.threads, num_gpus=1 if pool.device == "cuda" else 0, max_concurrency=4
    )
    return actor.remote(pool, catalog_url, store_url, dict(store_options or {}), settings)
