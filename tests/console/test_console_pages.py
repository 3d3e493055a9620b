"""The console's three pages in a real browser: what a user clicks, and what a key may see."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.console.conftest import Site, catalog_job, screenshot
from ulpt.catalog import jobs as job_queries


def rows(page) -> list[str]:
    return page.locator("main table tbody tr").all_inner_texts()


def test_adapters_table_filters_and_an_adapter_page_promotes_an_alias(site: Site) -> None:
    page = site.page("acme")
    expect(page.locator("main table tbody tr")).to_have_count(3)
    assert all("theirs" not in row for row in rows(page))
    screenshot(page, "adapters")

    page.get_by_label("Name", exact=True).fill("user-2")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("main table tbody tr")).to_have_count(1)
    assert "user-2:1" in rows(page)[0]

    page.get_by_label("Name", exact=True).fill("")
    page.get_by_label("Metric threshold (e.g. eval_accuracy>=0.8)").fill("eval_accuracy>=0.6")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("main table tbody tr")).to_have_count(2)  # 0.6 and 0.7, not 0.5

    page.get_by_role("link", name="user-2:1").click()
    expect(page.get_by_role("heading", name="Adapter user-2:1")).to_be_visible()
    record = site.clients["acme"].adapters.get("user-2:1")
    expect(page.locator("dl.facts").first).to_contain_text(record.projection_fingerprint or "")
    page.get_by_label("Promote to alias").fill("prod")
    page.get_by_role("button", name="Promote").click()
    expect(page.get_by_text("prod → user-2:1")).to_be_visible()
    assert (
        site.clients["acme"].adapters.get("prod").ref == "user-2:1"
    )  # the catalog changed, not just the page
    assert site.errors == []


def test_a_running_jobs_progress_advances_without_a_reload_and_cancel_stops_it(site: Site) -> None:
    client = site.clients["acme"]
    job_id = catalog_job(client, 4)
    page = site.page("acme")
    page.goto(f"{site.url}/console/#/jobs/{job_id}")
    progress = page.locator("#job-progress")
    expect(progress).to_have_attribute("value", "0")
    page.evaluate("window.__sameDocument = true")

    with client.catalog.session() as s:  # two fits end, as a worker would record them
        for i, fit in enumerate(job_queries.claim_fits(s, job_id, 2, "worker-a")):
            metrics = {"eval_accuracy": 0.6 + i / 10, "learned": 1.0, "train_curve": [2.0, 1.5, 1.0 - i / 10],
                       "eval_history": [{"step": 3, "eval_loss": 1.1}]}  # fmt: skip
            job_queries.mark_fit_done(s, fit.id, metrics=metrics)
    expect(progress).to_have_attribute("value", "2", timeout=15_000)
    expect(page.locator("#job-counts")).to_contain_text("2 done")
    expect(page.get_by_text("2 of 2 evaluated fits beat zero-shot")).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True  # updated in place, never reloaded
    expect(page.locator("figure svg polyline")).not_to_have_count(0, timeout=15_000)  # curves drawn
    screenshot(page, "job")

    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("main")).to_contain_text(re.compile("cancelled"), timeout=15_000)
    assert client.jobs.get(str(job_id)).status().status == "cancelled"
    expect(page.get_by_role("button", name="Resume job")).to_be_visible()
    assert site.errors == []


def test_another_tenants_key_sees_none_of_it(site: Site) -> None:
    job_id = catalog_job(site.clients["acme"], 2)
    page = site.page("globex")
    expect(page.locator("main table tbody tr")).to_have_count(1)
    assert "theirs:1" in rows(page)[0]

    page.goto(f"{site.url}/console/#/adapters/user-1:1")
    expect(page.get_by_role("alert")).to_have_text("Not found (or not visible to this key).")
    page.goto(f"{site.url}/console/#/jobs/{job_id}")
    expect(page.get_by_role("alert")).to_have_text("Not found (or not visible to this key).")
    page.goto(f"{site.url}/console/#/jobs")
    expect(page.get_by_text("No jobs yet")).to_be_visible()


def test_a_refused_key_is_asked_for_again_and_never_shown(site: Site) -> None:
    page = site.page(None)
    page.get_by_label("API key").fill("ulpt-not-a-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.get_by_role("alert")).to_have_text("That key was refused.")
    assert "ulpt-not-a-key" not in page.content()
    page.get_by_label("API key").fill(site.keys["acme"])
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("main table tbody tr")).to_have_count(3)
    assert site.keys["acme"] not in page.content()
