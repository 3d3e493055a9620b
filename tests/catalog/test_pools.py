"""Trainer pools' rows on SQLite and PostgreSQL: claims are fair between tenants (weights, then job
priority, then age), never take a fit of another pool, a dedicated or an ended job, and move the job
with its first fit; leases are renewed by their member and, once run out, give fits back from their
checkpoints or fail them at the attempts cap."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from tests.catalog.conftest import Cli
from ulpt.catalog.db import Catalog, open_catalog
from ulpt.catalog.jobs import FitOutcome, add_fits, create_job, list_fits, mark_fits_done, record_checkpoint
from ulpt.catalog.lifecycle import FitRowState, JobState, move_job
from ulpt.catalog.models import FitRow, JobRow, utcnow
from ulpt.catalog.pools import (
    MEMBER_STALE_S,
    MemberReport,
    PoolKey,
    beat_member,
    claim_fits_fairly,
    leave_pool,
    pool_overview,
    renew_leases,
    requeue_expired_leases,
)
from ulpt.catalog.tenants import set_tenant_weight
from ulpt.errors import SpecError

POOL = PoolKey("tiny-llama", "float32", "cpu")
LEASE_S = 30.0


@pytest.fixture()
def catalog(catalog_url: str) -> Iterator[Catalog]:
    catalog = open_catalog(catalog_url)
    yield catalog
    catalog.close()


def pooled_job(
    catalog: Catalog,
    tenant: str,
    n_fits: int,
    *,
    priority: int = 0,
    pool: PoolKey | None = POOL,
    max_attempts: int = 3,
) -> uuid.UUID:
    """A job as a pooled submission records it: pending, naming its pool, with pending fits."""
    spec = {"base_model": "tiny-llama", "train": {"max_attempts": max_attempts}}
    with catalog.session() as s:
        driver = None if pool is None else pool.name
        job = create_job(s, tenant, spec, name=f"{tenant}-job", priority=priority, driver=driver)
        add_fits(s, job.id, [f"{tenant}-{i}" for i in range(n_fits)])
        return job.id


def claim(catalog: Catalog, k: int, member: str = "member-1", **kwargs: object) -> list[FitRow]:
    with catalog.session() as s:
        return claim_fits_fairly(s, POOL, member, k, LEASE_S, **kwargs)  # type: ignore[arg-type]


def tenants_of(catalog: Catalog, fits: list[FitRow]) -> list[str]:
    with catalog.read() as s:
        tenant_of = dict(s.execute(select(JobRow.id, JobRow.tenant)).all())
    return [tenant_of[fit.job_id] for fit in fits]


def status_of(catalog: Catalog, job_id: uuid.UUID) -> JobRow:
    with catalog.read() as s:
        job = s.get(JobRow, job_id)
        assert job is not None
        return job


def test_one_fit_of_a_second_tenant_is_claimed_first_behind_a_thousand(catalog: Catalog) -> None:
    big = pooled_job(catalog, "tenant-a", 1000)
    small = pooled_job(catalog, "tenant-b", 1)
    claimed = claim(catalog, 4)
    assert Counter(tenants_of(catalog, claimed)) == {"tenant-a": 3, "tenant-b": 1}
    assert [f.key for f in claimed if f.job_id == small] == ["tenant-b-0"]
    assert status_of(catalog, big).status == status_of(catalog, small).status == JobState.RUNNING


def test_a_tenants_running_fits_count_against_its_share(catalog: Catalog) -> None:
    pooled_job(catalog, "tenant-a", 10)
    assert tenants_of(catalog, claim(catalog, 2)) == ["tenant-a", "tenant-a"]
    pooled_job(catalog, "tenant-b", 3)  # newer than every fit of tenant-a, yet under its share
    assert tenants_of(catalog, claim(catalog, 2, member="member-2")) == ["tenant-b", "tenant-b"]
    assert tenants_of(catalog, claim(catalog, 2, member="member-3")) == ["tenant-a", "tenant-b"]


def test_claims_follow_the_tenants_weights(catalog: Catalog) -> None:
    pooled_job(catalog, "tenant-a", 20)
    pooled_job(catalog, "tenant-b", 20)
    with catalog.session() as s:
        set_tenant_weight(s, "tenant-a", 3)
    assert Counter(tenants_of(catalog, claim(catalog, 8))) == {"tenant-a": 6, "tenant-b": 2}


def test_within_a_tenant_the_higher_priority_job_goes_first_then_the_older_fit(catalog: Catalog) -> None:
    older = pooled_job(catalog, "tenant-a", 3)
    urgent = pooled_job(catalog, "tenant-a", 2, priority=5)
    claimed = claim(catalog, 3)
    assert [(f.job_id, f.key) for f in claimed] == [
        (urgent, "tenant-a-0"),
        (urgent, "tenant-a-1"),
        (older, "tenant-a-0"),
    ]


def test_a_claim_takes_only_open_jobs_of_its_own_pool(catalog: Catalog) -> None:
    pooled_job(catalog, "tenant-a", 2, pool=None)  # dedicated: its driver claims its fits
    pooled_job(catalog, "tenant-a", 2, pool=PoolKey("tiny-llama", "bfloat16", "cpu"))
    cancelled = pooled_job(catalog, "tenant-b", 2)
    with catalog.session() as s:
        assert move_job(s, cancelled, JobState.CANCELLED)
    assert claim(catalog, 10) == []
    mine = pooled_job(catalog, "tenant-c", 1)
    assert [f.job_id for f in claim(catalog, 10)] == [mine]


def test_a_claim_leases_the_fit_counts_an_attempt_and_starts_the_job(catalog: Catalog) -> None:
    job = pooled_job(catalog, "tenant-a", 1)
    before = utcnow()
    (fit,) = claim(catalog, 5, member="host:1:member")
    assert (fit.status, fit.worker, fit.attempts) == (FitRowState.RUNNING, "host:1:member", 1)
    assert fit.lease_until is not None
    assert before + timedelta(seconds=LEASE_S) <= fit.lease_until <= utcnow() + timedelta(seconds=LEASE_S)
    row = status_of(catalog, job)
    assert row.status == JobState.RUNNING and row.started_at is not None
    assert row.driver == POOL.name  # the pool stays the job's driver
    assert claim(catalog, 5) == []


@pytest.mark.service
def test_members_claiming_at_once_skip_each_others_locked_fits(fresh_postgres_url: str) -> None:
    """Row locks are PostgreSQL's (SQLite has one writer): on PostgreSQL alone."""
    catalog = open_catalog(fresh_postgres_url)
    pooled_job(catalog, "tenant-a", 4)
    with catalog.session() as first:
        mine = claim_fits_fairly(first, POOL, "member-1", 2, LEASE_S)  # locks held until commit
        with catalog.session() as second:
            second.execute(text("SET LOCAL lock_timeout = '5s'"))  # waiting would fail, not hang
            theirs = claim_fits_fairly(second, POOL, "member-2", 2, LEASE_S)
    catalog.close()
    assert len(mine) == len(theirs) == 2
    assert not {f.id for f in mine} & {f.id for f in theirs}


def test_a_member_renews_only_the_leases_it_holds(catalog: Catalog) -> None:
    pooled_job(catalog, "tenant-a", 3)
    mine = claim(catalog, 2, member="member-1")
    theirs = claim(catalog, 1, member="member-2")
    later = utcnow() + timedelta(minutes=10)
    with catalog.session() as s:
        held = renew_leases(s, "member-1", LEASE_S, now=later)
    assert held == {f.id for f in mine}
    with catalog.read() as s:
        leases = dict(s.execute(select(FitRow.id, FitRow.lease_until)).all())
    assert all(leases[f.id] == later + timedelta(seconds=LEASE_S) for f in mine)
    assert leases[theirs[0].id] == theirs[0].lease_until


def test_expired_leases_go_back_to_pending_from_their_checkpoints(catalog: Catalog) -> None:
    job = pooled_job(catalog, "tenant-a", 3)
    lost = claim(catalog, 2, member="dead-member")
    alive = claim(catalog, 1, member="live-member", now=utcnow() + timedelta(seconds=LEASE_S))
    with catalog.session() as s:
        record_checkpoint(s, [f.id for f in lost], "checkpoint-blob")
    after_lease = utcnow() + timedelta(seconds=LEASE_S + 1)
    with catalog.session() as s:
        counts = requeue_expired_leases(s, POOL, now=after_lease)
    assert counts == {"requeued": 2, "exhausted": 0, "settled": 0}
    with catalog.read() as s:
        fits = {f.id: f for f in list_fits(s, job)}
    for fit in lost:
        row = fits[fit.id]
        assert (row.status, row.worker, row.lease_until) == (FitRowState.PENDING, None, None)
        assert (row.checkpoint, row.attempts) == ("checkpoint-blob", 1)  # resumes there; attempt counted
    assert fits[alive[0].id].status == FitRowState.RUNNING  # its lease still runs
    with catalog.session() as s:
        assert renew_leases(s, "dead-member", LEASE_S) == set()  # a member that comes back holds nothing
    again = claim(catalog, 2, member="live-member-2")
    assert {f.id for f in again} == {f.id for f in lost}
    assert all(f.attempts == 2 and f.checkpoint == "checkpoint-blob" for f in again)


def test_a_fit_at_its_attempts_cap_fails_and_its_job_ends(catalog: Catalog) -> None:
    job = pooled_job(catalog, "tenant-a", 2, max_attempts=1)
    first, second = claim(catalog, 2)
    with catalog.session() as s:
        mark_fits_done(s, [FitOutcome(first.id)])
        counts = requeue_expired_leases(s, POOL, now=utcnow() + timedelta(seconds=LEASE_S + 1))
    assert counts == {"requeued": 0, "exhausted": 1, "settled": 1}
    with catalog.read() as s:
        fits = {f.id: f for f in list_fits(s, job)}
    assert fits[second.id].status == FitRowState.FAILED
    assert "train.max_attempts" in (fits[second.id].error or "")
    row = status_of(catalog, job)
    assert (row.status, row.error) == (JobState.DONE, "1 of 2 fit(s) failed")


def test_expiry_leaves_other_pools_and_dedicated_jobs_alone(catalog: Catalog) -> None:
    other = PoolKey("tiny-llama", "bfloat16", "cpu")
    job = pooled_job(catalog, "tenant-a", 1, pool=other)
    with catalog.session() as s:
        (fit,) = claim_fits_fairly(s, other, "member-9", 1, LEASE_S)
        counts = requeue_expired_leases(s, POOL, now=utcnow() + timedelta(hours=1))
    assert counts["requeued"] == 0
    with catalog.read() as s:
        assert list_fits(s, job)[0].status == FitRowState.RUNNING


def test_bad_weights_priorities_and_leases_are_one_line_errors(catalog: Catalog) -> None:
    with catalog.session() as s:
        for weight in (0, -1.0, float("nan"), True, "2"):
            with pytest.raises(SpecError, match="tenant weight must be a number above 0"):
                set_tenant_weight(s, "tenant-a", weight)  # type: ignore[arg-type]
        for priority in (1.5, "high", 10**7, True):
            with pytest.raises(SpecError, match="job priority must be an integer"):
                create_job(s, "tenant-a", {}, priority=priority)  # type: ignore[arg-type]
        with pytest.raises(SpecError, match="a pool lease must be a positive number of seconds"):
            claim_fits_fairly(s, POOL, "member-1", 1, 0)


def test_a_pool_name_fits_the_driver_column_whatever_the_base_models_path() -> None:
    long = PoolKey("/models/" + "very-long-folder/" * 20 + "smollm2", "bfloat16", "cuda")
    assert len(long.name) <= 128 and long.name.endswith("/bfloat16/cuda")
    assert long.name != PoolKey(long.base_model + "-other", "bfloat16", "cuda").name
    assert POOL.name == "pool:tiny-llama/float32/cpu"


def test_the_overview_shows_live_members_queue_depth_and_running_fits_per_tenant(catalog: Catalog) -> None:
    other = PoolKey("tiny-llama", "bfloat16", "cpu")
    pooled_job(catalog, "tenant-a", 5)
    pooled_job(catalog, "tenant-b", 2)
    pooled_job(catalog, "tenant-c", 3, pool=None)  # dedicated: in no pool
    claim(catalog, 3, member="member-1")  # tenant-a 2, tenant-b 1
    with catalog.session() as s:
        beat_member(
            s, POOL, "member-1", MemberReport(fits=3, steps=40, fits_per_forward=3, rows_per_forward=12)
        )
        beat_member(
            s, POOL, "member-2", MemberReport(fits=0, steps=0, fits_per_forward=0, rows_per_forward=0)
        )
        beat_member(
            s, other, "member-3", MemberReport(fits=0, steps=7, fits_per_forward=0, rows_per_forward=0)
        )
        leave_pool(s, "member-2")  # stopped cleanly
    with catalog.read() as s:
        overview = {p.pool: p for p in pool_overview(s)}
        later = pool_overview(s, now=utcnow() + timedelta(seconds=MEMBER_STALE_S + 1))
    mine = overview[POOL.name]
    assert (mine.queue_depth, mine.running_per_tenant) == (4, {"tenant-a": 2, "tenant-b": 1})
    assert [(m["id"], m["fits"], m["fits_per_forward"], m["rows_per_forward"]) for m in mine.members] == [
        ("member-1", 3, 3.0, 12.0)
    ]
    assert [m["id"] for m in overview[other.name].members] == ["member-3"]
    assert (overview[other.name].queue_depth, overview[other.name].running_per_tenant) == (0, {})
    assert set(overview) == {POOL.name, other.name}
    assert [(p.pool, p.members) for p in later] == [(POOL.name, [])]  # dead members drop out; the queue stays


def test_pools_list_prints_each_pool_and_member(catalog: Catalog, cli: Cli) -> None:
    pooled_job(catalog, "tenant-a", 3)
    claim(catalog, 1, member="host:7:pool-ab12")
    with catalog.session() as s:
        report = MemberReport(fits=1, steps=9, fits_per_forward=1, rows_per_forward=4)
        beat_member(s, POOL, "host:7:pool-ab12", report)
    listed = cli.json("pools", "list")
    assert isinstance(listed, list) and len(listed) == 1
    assert listed[0]["pool"] == POOL.name and listed[0]["queue_depth"] == 2
    assert listed[0]["running_per_tenant"] == {"tenant-a": 1}
    assert [m["id"] for m in listed[0]["members"]] == ["host:7:pool-ab12"]
    table = cli("pools", "list")
    assert POOL.name in table and "host:7:pool-ab12" in table and "tenant-a 1" in table
