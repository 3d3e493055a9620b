"""The playground through the whole serving stack: the console and the control plane deployed as Serve
applications beside the inference app, on the session's real Ray Serve and the tiny llama."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.console.conftest import chromium_path, screenshot
from tests.serve_fixtures import ServeStack
from ulpt.console import ConsoleConfig
from ulpt.console.deployment import build_application as build_console
from ulpt_control import ControlConfig
from ulpt_control.deployment import build_application as build_control


@pytest.fixture(scope="module")
def console_url(serve_stack: ServeStack) -> Iterator[str]:
    from ray import serve

    control = ControlConfig(home=str(serve_stack.home), app_name="pg-control", route_prefix="/pg-control")
    serve.run(build_control(control), name="pg-control", route_prefix="/pg-control")
    pages = ConsoleConfig(api_base="/pg-control", inference_base="/llama")
    serve.run(build_console(pages), name="pg-console", route_prefix="/pg-console")
    try:
        yield f"{serve_stack.url}/pg-console/"
    finally:
        serve.delete("pg-console")
        serve.delete("pg-control")


def test_the_playground_streams_different_answers_for_different_adapters(
    serve_stack: ServeStack, console_url: str
) -> None:
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(console_url)
            page.get_by_label("API key").fill(serve_stack.keys["acme"])
            page.get_by_role("button", name="Use this key").click()
            expect(page.locator("main table tbody tr")).not_to_have_count(0)  # the control plane answered

            page.goto(console_url + "#/playground")
            expect(page.locator("#model-0 option")).not_to_have_count(0)
            options = page.locator("#model-0 option").evaluate_all("os => os.map(o => o.value)")
            adapters = sorted(o for o in options if o.startswith("llama-0"))
            assert "tiny-llama" in options and len(adapters) >= 3, options
            choices = ["tiny-llama", *adapters[:3]]
            for slot, model in enumerate(choices):
                page.get_by_label(f"Model {slot + 1}").select_option(model)
            page.get_by_label("Input").fill("the quick brown fox")
            page.get_by_label("Max tokens").fill("12")
            page.get_by_role("button", name="Run").click()
            answers = page.locator("article.answer")
            expect(answers).to_have_count(4)
            for i in range(4):
                expect(answers.nth(i)).to_have_attribute("data-done", "true", timeout=60_000)
            texts = [answers.nth(i).locator("pre").inner_text() for i in range(4)]
            assert all(texts), texts
            assert len(set(texts)) > 1, texts  # adapters change the answer
            assert "llama-secret" not in " ".join(page.locator("#model-0 option").all_inner_texts())
            screenshot(page, "playground")
        finally:
            browser.close()
    assert errors == []
