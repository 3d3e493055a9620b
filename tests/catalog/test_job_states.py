"""The job and fit state machine on SQLite and PostgreSQL: every move is a compare-and-set, so a
cancel is never overwritten by a driver, of N resumes at once exactly one drives the job, and a row
never leaves a state the table says it cannot leave."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from ulpt.catalog import jobs as job_queries
from ulpt.catalog.lifecycle import (
    FIT_TERMINAL,
    FIT_TRANSITIONS,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    FitRowState,
    JobState,
    job_outcome,
)
from ulpt.catalog.models import JobRow, utcnow
from ulpt.errors import ConflictError
from ulpt.jobs_api import JobsAPI
from ulpt.sdk import Client
from ulpt_jobs.driver import STALE_AFTER_S, cancel_job, check_runnable, claim, run_job
from ulpt_jobs.state import job_status

RACERS = 8


def recorded_job(client: Client, n_fits: int = 3) -> uuid.UUID:
    """A job as a submission records it: pending, with pending fits."""
    with client.catalog.session() as s:
        job = job_queries.create_job(s, client.tenant, {"base_model": "tiny"}, name="race")
        job_queries.add_fits(s, job.id, [f"user-{i}" for i in range(n_fits)])
        return job.id


def race(n: int, fn: Any) -> tuple[list[Any], list[BaseException]]:
    """Call `fn()` from `n` threads released together; (results, errors)."""
    start, results, errors = threading.Barrier(n), [], []

    def one() -> None:
        start.wait()
        try:
            results.append(fn())
        except BaseException as exc:  # collected and asserted on by the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_of_concurrent_resumes_exactly_one_claims_the_job(client: Client) -> None:
    job_id = recorded_job(client)
    cancel_job(client.catalog, str(job_id))
    winners, losers = race(RACERS, lambda: claim(client.catalog, str(job_id), resume=True))
    assert len(winners) == 1 and len(losers) == RACERS - 1
    assert all(
        isinstance(e, ConflictError) and "is running (its driver's heartbeat" in str(e) for e in losers
    ), losers
    with client.catalog.read() as s:
        status = job_status(s, job_id)
    assert (status.status, status.driver, status.attempt) == ("running", winners[0], 1)


def test_a_cancel_after_submit_is_never_overwritten_by_the_new_jobs_driver(client: Client) -> None:
    """The driver of a new job starts it only while pending; one that claimed it first and then
    sees a cancel leaves it cancelled, without starting a worker or claiming a fit."""
    target = JobsAPI(client).target()
    late = recorded_job(client)
    cancel_job(client.catalog, str(late))  # the cancel lands before the driver starts
    with pytest.raises(ConflictError, match="is cancelled, so its driver does not start it"):
        claim(client.catalog, str(late), resume=False)
    early = recorded_job(client)
    driver = claim(client.catalog, str(early), resume=False)  # the driver claims first...
    cancel_job(client.catalog, str(early))  # ...the cancel lands before it runs
    for job_id, own in ((late, None), (early, driver)):
        if own is None:
            with pytest.raises(ConflictError, match="is cancelled"):
                run_job(target, str(job_id), resume=False)
        else:
            assert run_job(target, str(job_id), driver=own).status == "cancelled"
        with client.catalog.session() as s:
            assert job_queries.claim_fits(s, job_id, 10, "worker-a") == []  # nothing claims its fits
            assert job_queries.fit_counts(s, job_id)["pending"] == 3
            assert job_status(s, job_id).status == "cancelled"
    resumed = claim(client.catalog, str(early), resume=True)  # a resume after a cancel still works
    with client.catalog.read() as s:
        assert (job_status(s, early).status, job_status(s, early).driver) == ("running", resumed)


def test_a_driver_that_lost_its_claim_stops_and_records_nothing(client: Client) -> None:
    job_id = recorded_job(client)
    first = claim(client.catalog, str(job_id), resume=False)
    second = claim(client.catalog, str(job_id), force=True)  # takes the job over
    assert first != second
    with client.catalog.read() as s:
        from ulpt_jobs.state import job_is_stopped

        assert job_is_stopped(s, job_id, first) and not job_is_stopped(s, job_id, second)
    assert run_job(JobsAPI(client).target(), str(job_id), driver=first).attempt == 2  # left to `second`


def test_check_runnable_refuses_a_cancelled_job_to_a_new_driver_not_to_a_resume() -> None:
    with pytest.raises(ConflictError, match="is cancelled, so its driver does not start it"):
        check_runnable(JobState.CANCELLED, None, None, "j1", resume=False)
    check_runnable(JobState.CANCELLED, None, None, "j1", resume=True)
    with pytest.raises(ConflictError, match="already done"):
        check_runnable(JobState.DONE, None, None, "j1", resume=True)


def test_no_row_leaves_a_state_the_table_does_not_allow(client: Client) -> None:
    assert {s for s, moves in JOB_TRANSITIONS.items() if not moves} == {JobState.DONE}
    assert {s for s, moves in FIT_TRANSITIONS.items() if not moves} == FIT_TERMINAL
    assert JOB_TERMINAL == {JobState.DONE, JobState.FAILED, JobState.CANCELLED}
    job_id = recorded_job(client, n_fits=2)
    with client.catalog.session() as s:
        job_queries.set_job_status(s, job_id, "running")
        a, b = job_queries.claim_fits(s, job_id, 2, "worker-a")
        job_queries.mark_fit_done(s, a.id, metrics={"eval_loss": 0.5})
        assert not job_queries.mark_fit_failed(s, a.id, "late error from a zombie worker")
        assert job_queries.release_fits(s, [b.id], "stopped", worker="worker-b") == 0  # not worker-b's
        assert job_queries.release_fits(s, [b.id], "stopped", worker="worker-a") == 1
        job_queries.set_job_status(s, job_id, "done")
    with client.catalog.session() as s, pytest.raises(ConflictError, match="cannot go from done to running"):
        job_queries.set_job_status(s, job_id, "running")
    with pytest.raises(ConflictError, match="is already done"):
        cancel_job(client.catalog, str(job_id))
    with client.catalog.read() as s:
        fits = {f.key: f for f in job_queries.list_fits(s, job_id)}
        assert (fits["user-0"].status, fits["user-0"].error) == (FitRowState.DONE, None)
        assert fits["user-1"].status == FitRowState.PENDING and job_status(s, job_id).status == "done"


@pytest.mark.parametrize(
    ("counts", "error", "outcome"),
    [
        ({"done": 3, "failed": 0}, None, (JobState.DONE, None)),
        ({"done": 2, "failed": 1}, None, (JobState.DONE, "1 of 3 fit(s) failed")),
        ({"done": 0, "failed": 2}, None, (JobState.FAILED, "all 2 fit(s) failed")),
        ({"done": 1, "pending": 2}, None, (JobState.FAILED, "2 fit(s) did not finish")),
        ({"done": 3}, "driver stopped: boom", (JobState.FAILED, "driver stopped: boom")),
    ],
)
def test_a_jobs_end_derives_from_its_fits(
    counts: dict[str, int], error: str | None, outcome: tuple[JobState, str | None]
) -> None:
    assert job_outcome(counts, error) == outcome


def test_a_resume_takes_over_a_running_job_only_once_its_driver_went_silent(client: Client) -> None:
    job_id = recorded_job(client)
    claim(client.catalog, str(job_id), resume=False)
    with pytest.raises(ConflictError, match="is running"):
        claim(client.catalog, str(job_id))
    with client.catalog.session() as s:  # its driver's last beat was longer ago than STALE_AFTER_S
        silent = utcnow() - timedelta(seconds=STALE_AFTER_S + 1)
        s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=silent))
    second = claim(client.catalog, str(job_id))
    with client.catalog.read() as s:
        status = job_status(s, job_id)
    assert (status.status, status.driver, status.attempt) == ("running", second, 2)
    assert status.heartbeat_at is not None and status.heartbeat_at > silent
