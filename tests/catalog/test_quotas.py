"""Per-tenant quotas on SQLite and PostgreSQL: the pending fits of a tenant's open jobs count against
its limit (429: retry later), a job bigger than a limit is refused outright (413), other tenants and
lifted quotas are not limited, and bad limits are one-line errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ulpt.catalog.db import Catalog, open_catalog
from ulpt.catalog.jobs import add_fits, create_job
from ulpt.catalog.lifecycle import JobState, move_job
from ulpt.catalog.quotas import check_submission, set_tenant_quotas
from ulpt.errors import QuotaError, SpecError


@pytest.fixture()
def catalog(catalog_url: str) -> Iterator[Catalog]:
    catalog = open_catalog(catalog_url)
    yield catalog
    catalog.close()


def waiting_job(catalog: Catalog, tenant: str, fits: int) -> None:
    with catalog.session() as s:
        job = create_job(s, tenant, {})
        add_fits(s, job.id, [str(i) for i in range(fits)])


def check(catalog: Catalog, tenant: str, fits: int, row_steps: int = 0) -> None:
    with catalog.read() as s:
        check_submission(s, tenant, fits=fits, row_steps=row_steps)


def test_pending_fits_of_open_jobs_count_against_the_limit(catalog: Catalog) -> None:
    waiting_job(catalog, "acme", 3)
    with catalog.session() as s:
        set_tenant_quotas(s, "acme", max_pending_fits=5)
        ended = create_job(s, "acme", {})
        add_fits(s, ended.id, ["x", "y", "z"])
        assert move_job(s, ended.id, JobState.CANCELLED)  # its fits wait for nothing
    check(catalog, "acme", 2)
    with pytest.raises(QuotaError, match="3 fits are already waiting and this job adds 3") as info:
        check(catalog, "acme", 3)
    assert info.value.rate
    with pytest.raises(QuotaError, match="this job has 6 fits") as too_many:
        check(catalog, "acme", 6)
    assert not too_many.value.rate  # waiting never helps
    check(catalog, "globex", 100)  # another tenant, no quota


def test_the_operators_policy_is_the_default_and_a_tenants_own_quota_overrides_it(catalog: Catalog) -> None:
    """One mechanism: the control plane's `limits.max_pending_fits` reaches this check as the default."""
    waiting_job(catalog, "acme", 3)
    with catalog.read() as s:
        check_submission(s, "acme", fits=1, row_steps=0, default_max_pending=4)
        with pytest.raises(QuotaError, match="3 fits are already waiting and this job adds 2") as info:
            check_submission(s, "acme", fits=2, row_steps=0, default_max_pending=4)
        assert info.value.rate
    with catalog.session() as s:
        set_tenant_quotas(s, "acme", max_pending_fits=10)  # its own quota wins over the default
    with catalog.read() as s:
        check_submission(s, "acme", fits=2, row_steps=0, default_max_pending=4)


def test_a_job_over_the_row_steps_limit_is_refused_and_a_lifted_quota_passes(catalog: Catalog) -> None:
    with catalog.session() as s:
        set_tenant_quotas(s, "acme", max_job_row_steps=1000)
    check(catalog, "acme", 1, row_steps=1000)
    with pytest.raises(QuotaError, match="1,001 rows x steps, over its quota of 1,000") as info:
        check(catalog, "acme", 1, row_steps=1001)
    assert not info.value.rate
    with catalog.session() as s:
        set_tenant_quotas(s, "acme", max_job_row_steps=None)
    check(catalog, "acme", 1, row_steps=10**9)


def test_bad_quota_values_are_one_line_errors(catalog: Catalog) -> None:
    with catalog.session() as s:
        for value in (-1, 1.5, "10", True, 10**16):
            with pytest.raises(SpecError, match="max_pending_fits must be a whole number"):
                set_tenant_quotas(s, "acme", max_pending_fits=value)
