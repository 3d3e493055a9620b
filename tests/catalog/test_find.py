"""`find`: every filter, both sort kinds, and cursor pagination that neither skips nor repeats."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from ulpt.adapters import Adapter
from ulpt.errors import SpecError
from ulpt.registry import Registration
from ulpt.sdk import Client

MakeAdapter = Callable[..., Adapter]


@pytest.fixture()
def populated(client: Client, make_adapter: MakeAdapter) -> Client:
    """30 adapters: 3 teams x 10, accuracy 0.50..0.79, two methods, two ranks, one bare tag on evens."""
    registrations = []
    for i in range(30):
        tags = {"team": f"t{i % 3}"} | ({"even": ""} if i % 2 == 0 else {})
        method, rank = ("pt", 2) if i % 5 == 0 else ("ulpt", 2 + (i % 2) * 2)
        registrations.append(
            Registration(
                make_adapter(i, method=method, rank=rank),
                name=f"user-{i:02d}",
                tags=tags,
                metrics={"eval_accuracy": 0.5 + i / 100, "eval_loss": 1.0 - i / 100},
            )
        )
    client.adapters.register_many(registrations[:15])
    client.adapters.register_many(registrations[15:])
    return client


def names(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.name for r in page]


def test_filters(populated: Client) -> None:
    find = populated.adapters.find
    assert len(find(limit=100)) == 30
    assert len(find(tags={"team": "t1"}, limit=100)) == 10
    assert names(find(tags=["team=t1", "even"], order_by="name")) == [
        f"user-{i:02d}" for i in (4, 10, 16, 22, 28)
    ]
    assert len(find(tags={"even": None}, limit=100)) == 15
    assert len(find(tags={"team": "nope"})) == 0
    assert len(find(method="pt", limit=100)) == 6
    assert len(find(method="ulpt", rank=4, limit=100)) == 15 - 3  # odd i, minus those with i % 5 == 0
    assert len(find(base_model="tiny-llama", limit=100)) == 30 and len(find(base_model="other")) == 0
    assert names(find(name="user-07")) == ["user-07"]
    assert len(find(metrics={"eval_accuracy": (">=", 0.75)}, limit=100)) == 5
    assert len(find(metrics=["eval_accuracy>0.75", "eval_loss<0.725"], limit=100)) == 2
    assert len(find(metrics={"eval_accuracy": 0.7}, limit=100)) == 10  # a bare number means >=
    assert len(find(metrics=["missing_metric>=0"])) == 0


def test_created_range(populated: Client) -> None:
    now = datetime.now(timezone.utc)
    assert len(populated.adapters.find(created_after=now - timedelta(minutes=5), limit=100)) == 30
    assert len(populated.adapters.find(created_before=now - timedelta(minutes=5))) == 0
    assert len(populated.adapters.find(created_after=now + timedelta(minutes=5))) == 0


def test_order_by_metric_and_fields(populated: Client) -> None:
    best = populated.adapters.find(tags={"team": "t0"}, order_by="-metrics.eval_accuracy", limit=3)
    assert names(best) == ["user-27", "user-24", "user-21"]
    worst = populated.adapters.find(order_by="metrics.eval_accuracy", limit=2)
    assert names(worst) == ["user-00", "user-01"]
    assert names(populated.adapters.find(order_by="-name", limit=2)) == ["user-29", "user-28"]
    newest = populated.adapters.find(limit=1).items[0]
    assert newest.created_at == max(r.created_at for r in populated.adapters.find(limit=100))


@pytest.mark.parametrize(
    "order_by", ["-created_at", "created_at", "name", "-metrics.eval_accuracy", "version"]
)
def test_cursor_pages_cover_everything_once(populated: Client, order_by: str) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = populated.adapters.find(order_by=order_by, limit=7, cursor=cursor)
        seen += [r.id for r in page]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 5 and len(seen) == len(set(seen)) == 30
    assert [r.id for r in populated.adapters.iter(order_by=order_by, limit=7)] == seen


def test_cursor_survives_new_rows(populated: Client, make_adapter: MakeAdapter) -> None:
    first = populated.adapters.find(order_by="name", limit=10)
    populated.adapters.register(make_adapter(100), name="user-00b")  # sorts into the first page
    second = populated.adapters.find(order_by="name", limit=10, cursor=first.next_cursor)
    assert names(second)[0] == "user-10"


def test_bad_queries(populated: Client) -> None:
    page = populated.adapters.find(limit=5)
    with pytest.raises(SpecError, match="different query"):
        populated.adapters.find(limit=5, tags={"team": "t0"}, cursor=page.next_cursor)
    with pytest.raises(SpecError, match="invalid cursor"):
        populated.adapters.find(cursor="garbage!")
    with pytest.raises(SpecError, match="cannot sort by"):
        populated.adapters.find(order_by="size")
    with pytest.raises(SpecError, match="limit must be"):
        populated.adapters.find(limit=0)
    with pytest.raises(SpecError, match="invalid metric filter"):
        populated.adapters.find(metrics=["eval_accuracy~0.5"])
    for value in (["eval_accuracy>=nan"], ["eval_accuracy<inf"], {"eval_accuracy": True}):
        with pytest.raises(SpecError, match="needs a finite number"):  # NaN would silently match nothing
            populated.adapters.find(metrics=value)
    with pytest.raises(SpecError, match="status must be"):
        populated.adapters.find(status="gone")


def test_another_tenant_named_as_a_filter_shows_only_its_public_adapters(
    client: Client, make_adapter: MakeAdapter
) -> None:
    """The client's tenant is who asks: naming another tenant never reveals its private adapters,
    through any filter or sort path (the metric join scopes by tenant on its own)."""
    acme = Client(home=client.home, catalog_url=client.catalog_url, store_url=client.store_url, tenant="acme")
    evil = Client(home=client.home, catalog_url=client.catalog_url, store_url=client.store_url, tenant="evil")
    with acme, evil:
        acme.adapters.register(make_adapter(1), name="secret", metrics={"eval_accuracy": 0.9})
        acme.adapters.register(make_adapter(2), name="shared", metrics={"eval_accuracy": 0.8}, public=True)
        evil.adapters.register(make_adapter(3), name="mine")
        for extra in (
            {},
            {"include_public": True},
            {"order_by": "-metrics.eval_accuracy"},
            {"metrics": ["eval_accuracy>=0.5"]},
            {"name": "secret"},
        ):
            found = {(r.tenant, r.name) for r in evil.adapters.iter(tenant="acme", **extra)}
            assert found <= {("acme", "shared")}, extra
        assert [r.name for r in evil.adapters.find(tenant="acme", limit=100)] == ["shared"]
        assert [r.name for r in evil.adapters.find(tenant="evil")] == ["mine"]
        assert {r.name for r in evil.adapters.find(include_public=True)} == {"mine", "shared"}
        assert {r.name for r in acme.adapters.find(tenant="acme")} == {"secret", "shared"}


def test_another_tenant_s_jobs_are_out_of_reach(client: Client) -> None:
    from ulpt.catalog.jobs import create_job as create_job_row
    from ulpt.errors import NotFoundError

    with client.catalog.session() as session:
        job_id = str(create_job_row(session, "acme", {"base_model": "tiny"}, name="acme-job").id)
    evil = Client(home=client.home, catalog_url=client.catalog_url, store_url=client.store_url, tenant="evil")
    with evil:
        assert evil.jobs.list() == []
        for action in (evil.jobs.get, evil.jobs.resume, evil.jobs.cancel):
            with pytest.raises(NotFoundError):
                action(job_id)
