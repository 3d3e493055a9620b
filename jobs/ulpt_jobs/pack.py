"""A pack of fits on one frozen base model: the steps, checkpoints and registration that a job's Ray
Train worker (`ulpt_jobs.worker.FitRunner`) and a trainer pool member (`ulpt_jobs.pool`) share.

A runner holds claimed fit rows under a *slot*, its name for the fit inside the pack: the fit's key
for a job's worker (one job per pack, so existing checkpoints keep their names), `JOB/KEY` for a pool
member, whose pack mixes jobs whose keys may repeat. Each claimed fit becomes one FitState (several
for a sweep) whose key and group are its slot; it steps with every other fit of the pack, is
checkpointed every `checkpoint_every` pack steps, and when it ends is registered in its tenant (blobs
first, one catalog transaction) and marked done or failed.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence

import torch

from ulpt.adapters import AdapterSpec
from ulpt.catalog.jobs import FitOutcome, mark_fit_failed, mark_fits_done, release_fits
from ulpt.catalog.models import FitRow
from ulpt.errors import CatalogError, MigrationRequiredError, StoreError, UlptError
from ulpt.models import BaseModel
from ulpt.registry import Registration, Registry
from ulpt.training import FitRequest, FitState, PackedTrainer, TrainConfig, sweep
from ulpt.training.api import fit_metrics, prepare_fit
from ulpt_jobs import state
from ulpt_jobs.checkpoints import PackCheckpoints
from ulpt_jobs.fit_data import read_fit_data


class PackRunner:
    """Claimed fits stepping together; subclasses say where fits come from and whose they are."""

    def __init__(
        self,
        model: BaseModel,
        registry: Registry,
        worker: str,
        device: torch.device | None = None,
        *,
        max_rows_per_forward: int,
        checkpoint_every: int,
    ) -> None:
        self.model = model
        self.registry = registry
        self.catalog = registry.catalog
        self.worker = worker
        self.device = device
        self.trainer = PackedTrainer(model, max_rows_per_forward=max_rows_per_forward)
        self.rows: dict[str, FitRow] = {}  # slot -> its claimed row
        self.candidates: dict[str, list[FitState]] = {}  # slot -> its FitStates (several in a sweep)
        self.checkpoints = PackCheckpoints(self.catalog, registry.store, checkpoint_every)
        self.resumed_from: dict[str, int] = {}  # slot -> the step its checkpoint had reached
        self.cpu_started = time.process_time()

    def slot(self, row: FitRow) -> str:
        """The fit's name inside this pack (unique in it)."""
        raise NotImplementedError

    def tenant_of(self, row: FitRow) -> str:
        """The tenant the fit's adapter is registered in."""
        raise NotImplementedError

    def step(self, active: list[FitState]) -> list[FitState]:
        """One packed step of `active`: record the fits that ended, checkpoint on schedule; what runs on."""
        ended = self.trainer.advance(active)
        settled = self._settled(ended)
        if settled:
            self._record(settled)
        self.checkpoints.step(self.candidates, self.rows)
        return [f for f in active if f.status == "running"]

    def release(self, active: Sequence[FitState], reason: str) -> None:
        """Checkpoint the unfinished fits of `active` and put them back to pending (no attempt counted),
        so whoever claims them next trains on from where they are (`forget` them to go on without)."""
        slots = list(dict.fromkeys(fit.group for fit in active))
        if not slots:
            return
        if self.checkpoints.every:
            self.checkpoints.save({s: self.candidates[s] for s in slots}, self.rows)
        with self.catalog.session() as session:
            release_fits(session, [self.rows[s].id for s in slots], reason, worker=self.worker)

    def forget(self, slots: Sequence[str]) -> None:
        """Drop fits from this pack without recording anything (released, or no longer ours)."""
        for slot in slots:
            for fit in self.candidates.pop(slot, []):
                if fit.status == "running":
                    fit.fail("left the pack")
            self.rows.pop(slot, None)
            self.resumed_from.pop(slot, None)

    def _prepare(self, claimed: Sequence[FitRow]) -> list[FitState]:
        """FitStates for claimed fits; a fit whose rows or spec cannot train is recorded failed now."""
        prepared, failed = [], {}
        self.rows.update({self.slot(row): row for row in claimed})
        for row in claimed:
            try:
                prepared.append((row, self._fit_states(row)))
            except UlptError as exc:
                if is_outage(exc):
                    raise
                failed[self.slot(row)] = str(exc)
        self.checkpoints.restore(prepared)
        self.resumed_from.update({self.slot(row): max(f.step for f in fits) for row, fits in prepared})
        if failed:
            with self.catalog.session() as session:
                for slot, error in failed.items():
                    mark_fit_failed(session, self.rows.pop(slot).id, error)
        return [fit for _, fits in prepared for fit in fits]

    def _fit_states(self, row: FitRow) -> list[FitState]:
        """The fit's FitState, or one per rate of its sweep (packed like any other fits)."""
        record = row.spec or {}
        fingerprint = record.get("dataset_fingerprint")
        if not fingerprint:
            raise UlptError(f"fit {row.key}: no rows were recorded for it at submission")
        train_rows, eval_rows = read_fit_data(self.registry.store, row.key, fingerprint)
        slot = self.slot(row)
        request = FitRequest(
            slot,
            AdapterSpec.from_dict(record["adapter"]),
            train_rows,
            eval_rows,
            TrainConfig.from_dict(record["train"]),
        )
        fits = [prepare_fit(self.model, c, group=slot) for c in sweep.expand(request)]
        if self.device is not None and self.device.type != "cpu":
            for fit in fits:
                fit.adapter.to(self.device)  # before its first step, where it joins a stack on that device
        self.candidates[slot] = fits
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
        ids, errors = {}, {}
        by_tenant: dict[str, dict[str, Registration]] = {}
        for fit in done:
            by_tenant.setdefault(self.tenant_of(self.rows[fit.key]), {})[fit.key] = self._registration(fit)
        for tenant, items in by_tenant.items():
            got, refused = self._register_in(tenant, items)
            ids.update(got)
            errors.update(refused)
        return ids, errors

    def _register_in(
        self, tenant: str, items: Mapping[str, Registration]
    ) -> tuple[dict[str, str], dict[str, str]]:
        try:
            records = self.registry.register_many(list(items.values()), tenant=tenant)
            return {key: record.id for key, record in zip(items, records)}, {}
        except UlptError as exc:
            if is_outage(exc):
                raise  # the catalog or store is down: the worker group restarts and retries
        ids, errors = {}, {}
        for key, item in items.items():
            try:
                ids[key] = self.registry.register(item, tenant=tenant).id
            except UlptError as exc:  # e.g. the name is an alias in this tenant: only this fit fails
                if is_outage(exc):
                    raise
                errors[key] = f"registration refused: {exc}"
        return ids, errors

    def _registration(self, fit: FitState) -> Registration:
        row = self.rows[fit.key]
        record = row.spec or {}
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
                state.FIT_KEY: row.key,
                **fit.config.to_dict(),
                **({"sweep": fit.sweep} if fit.sweep is not None else {}),
            },
            job_id=row.job_id,
        )

    def _loop_cpu_s(self) -> float:
        return round(time.process_time() - self.cpu_started, 3)


def is_outage(exc: UlptError) -> bool:
    """The catalog or store itself failing (retry the worker), as opposed to one fit's bad input."""
    return type(exc) in (CatalogError, StoreError) or isinstance(exc, MigrationRequiredError)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB
