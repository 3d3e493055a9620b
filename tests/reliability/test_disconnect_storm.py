"""Disconnect storm: streams that each read one chunk and hang up must stop costing the replica decode
steps at once, so the request after them is served as if they had never come.

Asserted: every abandoned stream is logged (status 499) with the tokens really decoded for it, and the
replica ran fewer than max_tokens / 2 decode steps for the whole storm plus one 1-token request (rows
that kept decoding to max_tokens would need at least max_tokens). Latencies are recorded, not asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from tests.reliability_fixtures import ReliabilityRun
from tests.serve_fixtures import ServeStack, deploy_app, tiny_llama_config

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]

APP = "storm"


@pytest.fixture(scope="module")
def storm_app(serve_stack: ServeStack) -> Iterator[str]:
    """The tiny llama over `serve_stack`'s catalog, in an application of its own (its own counters).

    The storm is one tenant's streams, more than the default per-tenant share admits (429 beyond it,
    tested in test_serving_hostile): this application lets them all in, so that what is measured is
    what disconnects do to decoding, not admission."""
    from ray import serve

    from ulpt_serving.limits import TenantLimits

    limits = TenantLimits(max_requests=64, max_streams=64)
    prefix = deploy_app(APP, tiny_llama_config(serve_stack, log_requests=True, limits=limits))
    try:
        yield f"{serve_stack.url}{prefix}"
    finally:
        serve.delete(APP)


def _hang_up_after_one_chunk(url: str, headers: dict[str, str], body: dict[str, Any], out: list[int]) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=headers, timeout=120) as answer:
        out.append(answer.status_code)
        next(answer.iter_bytes())


def _one_token(url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    answer = httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "y", "max_tokens": 1},
        headers=headers,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


def test_streams_that_disconnect_stop_decoding_and_the_next_request_does_not_wait(
    storm_app: str, serve_stack: ServeStack, reliability: ReliabilityRun
) -> None:
    streams = reliability.size(ci=8, full=16)
    max_tokens = reliability.size(ci=120, full=240)
    headers = serve_stack.headers()
    handle = serve_stack.handle(APP)
    idle_s = min(_one_token(storm_app, headers) for _ in range(3))  # warm, then the best of three
    before = handle.stats.remote().result()

    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=_hang_up_after_one_chunk,
            args=(
                storm_app,
                headers,
                {"model": f"llama-{i % 20:02d}", "prompt": "x", "max_tokens": max_tokens, "stream": True},
                statuses,
            ),
        )
        for i in range(streams)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    after_storm_s = _one_token(storm_app, headers)

    deadline = time.monotonic() + 60
    while True:  # each 499 is counted once its row has left the batch
        after = handle.stats.remote().result()
        abandoned = sum(m["by_status"].get("499", 0) for m in after["models"].values()) - sum(
            m["by_status"].get("499", 0) for m in before["models"].values()
        )
        if abandoned >= streams or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    steps = after["decode_steps"] - before["decode_steps"]
    generated = after["generated_tokens"] - before["generated_tokens"] - 1  # less the 1-token request
    reliability.record(
        "disconnect_storm",
        {
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds") + ", this test alone",
            "streams": streams,
            "max_tokens": max_tokens,
            "batches": after["batches"] - before["batches"],
            "decode_steps_storm_and_next_request": steps,
            "tokens_decoded_for_abandoned_rows": generated,
            "tokens_if_rows_had_run_to_max_tokens": streams * max_tokens,
            "replica_busy_s_storm_and_next_request": round(after["compute_s"] - before["compute_s"], 4),
            "next_1_token_request_idle_s": round(idle_s, 4),
            "next_1_token_request_after_storm_s": round(after_storm_s, 4),
            "logged_499": abandoned,
        },
    )
    assert statuses == [200] * streams
    assert abandoned == streams
    assert steps < max_tokens // 2, f"{steps} decode steps: abandoned rows kept decoding"
    assert streams <= generated <= streams * steps
