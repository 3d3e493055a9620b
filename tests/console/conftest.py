"""The console in a real browser: headless Chromium from Debian's `chromium` package, driven by
Playwright (no browser download), against the control plane and the console on one real HTTP port.

Two tenants (acme, globex) with a key each, three acme adapters and one of globex, as in the control
plane's own tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

import ulpt
from tests.http_server import serving
from ulpt.console import ConsoleConfig, build_console_app
from ulpt.sdk import Client
from ulpt_control import ControlConfig, ControlContext, build_app

HIDDEN = 16


def chromium_path() -> str:
    path = os.environ.get("ULPT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:  # a failure, not a skip: .ci/run installs Debian's chromium
        raise RuntimeError("the console tests need Debian's chromium (apt-get install chromium)")
    return path


@dataclass
class Site:
    """The running server, its tenants' SDK clients and keys, and pages that record console errors."""

    url: str
    clients: dict[str, Client]
    keys: dict[str, str]
    browser: Browser
    errors: list[str] = field(default_factory=list)

    def page(self, tenant: str | None = "acme") -> Page:
        """A fresh browser context (no shared storage), signed in as `tenant` (None: not signed in)."""
        page = self.browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.on("console", lambda m: self._record(m))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.goto(f"{self.url}/console/")
        if tenant is not None:
            page.get_by_label("API key").fill(self.keys[tenant])
            page.get_by_role("button", name="Use this key").click()
            page.get_by_role("heading", name="Adapters").wait_for()
        return page

    def _record(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[Site]:
    home = tmp_path / "home"
    clients = {t: Client(home=home, tenant=t) for t in ("acme", "globex")}
    acme = clients["acme"]
    for seed, name in enumerate(["user-1", "user-1", "user-2"]):
        adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=2, rank=2, seed=seed), hidden_size=HIDDEN)
        metrics = {"eval_accuracy": 0.5 + seed / 10, "learned": float(seed == 2)}
        acme.adapters.register(adapter, name=name, base_model="tiny", metrics=metrics)
    theirs = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=2, rank=2, seed=9), hidden_size=HIDDEN)
    clients["globex"].adapters.register(theirs, name="theirs", base_model="tiny")
    keys = {t: c.keys.create("console").key for t, c in clients.items()}

    app = FastAPI()
    app.mount("/console", build_console_app(ConsoleConfig()))
    app.mount("/", build_app(ControlContext(ControlConfig(home=str(home)), acme.registry, acme.locations)))
    with serving(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield Site(url, clients, keys, browser)
        finally:
            browser.close()
            for client in clients.values():
                client.close()


def screenshot(page: Page, name: str) -> None:
    """Save a screenshot for the README when ULPT_CONSOLE_SCREENSHOTS names a folder (`make screenshots`)."""
    folder = os.environ.get("ULPT_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def catalog_job(client: Client, n_fits: int) -> Any:
    """A running job recorded in the catalog, its fits advanced by the test as a worker would."""
    from ulpt.catalog import jobs as job_queries

    with client.catalog.session() as s:
        job = job_queries.create_job(s, client.tenant, {"base_model": "tiny"}, name="nightly")
        job_queries.add_fits(s, job.id, [f"user-{i}" for i in range(n_fits)])
        job_queries.set_job_status(s, job.id, "running")
        return job.id
