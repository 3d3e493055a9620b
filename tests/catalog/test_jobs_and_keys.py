"""Jobs/fits bookkeeping for bulk training, and API keys stored only as hashes."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from ulpt.catalog import create_api_key, revoke_api_key, verify_api_key
from ulpt.catalog import jobs as job_queries
from ulpt.catalog.models import ApiKeyRow
from ulpt.errors import NotFoundError, SpecError
from ulpt.sdk import Client


def test_job_lifecycle(client: Client) -> None:
    with client.catalog.session() as s:
        job = job_queries.create_job(s, "default", {"method": "ulpt", "n_tokens": 10}, name="nightly")
        assert job_queries.add_fits(s, job.id, ["u1", "u2", ("u3", {"lr": 0.1})]) == 3
        job_id = job.id
    with client.catalog.session() as s:
        job_queries.set_job_status(s, job_id, "running")
        claimed = job_queries.claim_fits(s, job_id, 2, "worker-a")
        assert [f.status for f in claimed] == ["running", "running"] and claimed[0].attempts == 1
        job_queries.mark_fit_done(s, claimed[0].id, metrics={"eval_loss": 0.5}, timings={"train_s": 1.5})
        job_queries.mark_fit_failed(s, claimed[1].id, "out of memory")
    with client.catalog.session() as s:
        assert job_queries.fit_counts(s, job_id) == {"pending": 1, "running": 0, "done": 1, "failed": 1}
        last = job_queries.claim_fits(s, job_id, 10, "worker-b")
        assert [f.key for f in last] == ["u3"] and last[0].spec == {"lr": 0.1}
        assert job_queries.claim_fits(s, job_id, 10, "worker-b") == []
        assert job_queries.requeue_running(s, job_id, worker="worker-b") == 1  # worker-b died
        job_queries.mark_fit_failed(s, last[0].id, "transient", retry=True)
        assert job_queries.fit_counts(s, job_id)["pending"] == 1
        job_queries.set_job_status(s, job_id, "done", timings={"total_s": 3.0})
    with client.catalog.read() as s:
        job = job_queries.get_job(s, str(job_id), "default")
        assert (job.status, job.n_fits, job.timings) == ("done", 3, {"total_s": 3.0})
        assert job.started_at is not None and job.finished_at is not None
        assert [j.id for j in job_queries.list_jobs(s, "default")] == [job_id]
        done = job_queries.list_fits(s, job_id, status="done")
        assert done[0].metrics == {"eval_loss": 0.5}
        assert set(job_queries.fits_by_key(s, job_id, ["u1", "u3"])) == {"u1", "u3"}
        with pytest.raises(NotFoundError):
            job_queries.get_job(s, str(job_id), "other-tenant")
        with pytest.raises(SpecError, match="invalid job id"):
            job_queries.get_job(s, "not-a-uuid")
    with client.catalog.session() as s, pytest.raises(SpecError, match="job status"):
        job_queries.set_job_status(s, job_id, "exploded")


def test_verdict_counts_read_the_learned_flag_of_done_fits_only(client: Client) -> None:
    """What a job's live progress says: how many evaluated fits learned, on SQLite and PostgreSQL."""
    outcomes = {"a": {"learned": 1.0}, "b": {"learned": 0.0}, "c": {"learned": 1.0}, "d": {"eval_loss": 1.0}}
    with client.catalog.session() as s:
        job = job_queries.create_job(s, "default", {}, name="verdicts")
        job_queries.add_fits(s, job.id, [*outcomes, "e", "f"])
        claimed = {f.key: f for f in job_queries.claim_fits(s, job.id, 6, "worker-a")}
        assert job_queries.verdict_counts(s, job.id) == {"evaluated": 0, "learned": 0}
        for key, metrics in outcomes.items():
            job_queries.mark_fit_done(s, claimed[key].id, metrics=metrics)
        job_queries.mark_fit_failed(s, claimed["e"].id, "out of memory")  # no verdict, not counted
    with client.catalog.read() as s:
        assert job_queries.verdict_counts(s, job.id) == {"evaluated": 3, "learned": 2}


def test_fits_marked_done_together_keep_each_its_own_outcome(client: Client) -> None:
    with client.catalog.session() as s:
        job_id = job_queries.create_job(s, "default", {}).id
        job_queries.add_fits(s, job_id, ["a", "b", "c"])
    with client.catalog.session() as s:
        claimed = job_queries.claim_fits(s, job_id, 3, "worker-a")
        job_queries.record_checkpoint(s, [fit.id for fit in claimed], "checkpoints/pack-1")
        job_queries.mark_fits_done(
            s,
            [
                job_queries.FitOutcome(fit.id)  # nothing recorded: NULLs, not JSON nulls
                if i == 0
                else job_queries.FitOutcome(fit.id, metrics={"eval_loss": i / 4}, timings={"train_s": i})
                for i, fit in enumerate(claimed[:2])
            ],
        )
        job_queries.mark_fits_done(s, [])  # nothing to mark is not an error
    with client.catalog.read() as s:
        fits = {fit.key: fit for fit in job_queries.list_fits(s, job_id)}
        assert job_queries.fit_counts(s, job_id) == {"pending": 0, "running": 1, "done": 2, "failed": 0}
    assert (fits["a"].metrics, fits["a"].timings, fits["a"].adapter_id) == (None, None, None)
    assert (fits["b"].metrics, fits["b"].timings) == ({"eval_loss": 0.25}, {"train_s": 1})
    assert fits["a"].finished_at is not None and fits["c"].status == "running" and fits["c"].metrics is None
    assert fits["a"].checkpoint is None  # a finished fit's checkpoint is garbage for `ulpt gc`
    assert fits["c"].checkpoint == "checkpoints/pack-1"  # still running: it may resume from it


def test_fits_added_in_several_inserts_are_all_recorded_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_queries, "_FITS_PER_INSERT", 2)  # 5 fits: inserts of 2, 2 and 1
    with client.catalog.session() as s:
        job_id = job_queries.create_job(s, "default", {}).id
        added = job_queries.add_fits(s, job_id, ((f"fit-{i}", {"i": i}) for i in range(5)))
    with client.catalog.read() as s:
        fits = job_queries.list_fits(s, job_id)
        n_fits = job_queries.get_job(s, job_id).n_fits
    assert added == n_fits == 5
    assert sorted((f.key, f.spec["i"]) for f in fits) == [(f"fit-{i}", i) for i in range(5)]


def test_concurrent_claims_never_share_a_fit(client: Client) -> None:
    with client.catalog.session() as s:
        job_id = job_queries.create_job(s, "default", {}).id
        job_queries.add_fits(s, job_id, [f"fit-{i}" for i in range(60)])
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with client.catalog.session() as s:
                fits = job_queries.claim_fits(s, job_id, 3, name)
                keys = [f.key for f in fits]
            if not keys:
                return
            with lock:
                claimed.extend(keys)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"fit-{i}" for i in range(60))


def test_api_keys_are_hashed_and_verifiable(client: Client) -> None:
    with Client(home=client.home, catalog_url=client.catalog_url, tenant="acme") as acme:
        new = acme.create_api_key("ci")
    assert new.key.startswith(f"ulpt_{new.id}_") and new.key not in repr(new)
    with client.catalog.read() as s:
        row = s.scalars(select(ApiKeyRow)).one()
        assert row.key_hash != new.key and new.key not in row.key_hash and len(row.key_hash) == 64
        assert verify_api_key(s, new.key) == "acme"
        assert verify_api_key(s, new.key[:-1] + ("A" if new.key[-1] != "A" else "B")) is None
        assert verify_api_key(s, "ulpt_000000000000_" + "x" * 43) is None
        assert verify_api_key(s, "garbage") is None
    with client.catalog.session() as s:
        other = create_api_key(s, "acme")
        revoke_api_key(s, "acme", new.id)
    with client.catalog.read() as s:
        assert verify_api_key(s, new.key) is None and verify_api_key(s, other.key) == "acme"
    with client.catalog.session() as s, pytest.raises(NotFoundError):
        revoke_api_key(s, "acme", "ffffffffffff")
