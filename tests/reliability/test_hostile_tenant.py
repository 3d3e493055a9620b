"""A hostile tenant against the control plane, measured: alias bombs and deep nesting answered with a
short 400 at bounded memory, uploads at constant memory, and slow clients that hold only their own
tenant's share while another tenant is served (its latency recorded idle and under the attack)."""

from __future__ import annotations

import asyncio
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.control.conftest import Plane
from tests.control.test_control_uploads import ROW, rows_of
from tests.http_server import serving
from tests.reliability_fixtures import ReliabilityRun
from tests.test_documents import alias_bomb, expanded
from ulpt.documents import MAX_DEPTH
from ulpt_control.context import ControlContext

pytestmark = pytest.mark.reliability

MiB = 1 << 20


def test_alias_bombs_and_deep_nesting_are_short_400s_at_bounded_memory(
    plane: Plane, reliability: ReliabilityRun
) -> None:
    """Alias bombs (9 aliases per level, up to 9 levels: 823 million values in 506 bytes) and specs
    nested up to 100,000 deep, as JSON and YAML: each a 400 of one short line; the peak is the Python
    memory the request allocated (the 8-level bomb built a 522 MB message before)."""
    cases: list[tuple[str, str, str]] = []
    for levels in range(1, 10):
        body = f"base_model: smollm2-135m\ntags: [{alias_bomb(levels)}]\n"
        cases.append((f"alias_bomb_{levels}_levels", body, "application/yaml"))
    for depth in (MAX_DEPTH + 1, 1000, reliability.size(10_000, 100_000)):
        nested = "[" * depth + "]" * depth
        cases.append((f"json_depth_{depth}", f'{{"tags": {nested}}}', "application/json"))
        cases.append((f"yaml_depth_{depth}", f"tags: {nested}\n", "application/yaml"))
    for name, body, kind in cases:
        tracemalloc.start()
        try:
            answer = plane.call("POST", "/v1/jobs", content=body, headers={"Content-Type": kind})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        levels = int(name.split("_")[2]) if name.startswith("alias") else 0
        figures = {
            "request_bytes": len(body),
            "expands_to": expanded(levels, 9) if levels else None,
            "status": answer.status_code,
            "answer_bytes": len(answer.content),
            "peak_mib": round(peak / MiB, 2),
            "message": answer.json()["error"]["message"],
        }
        assert answer.status_code == 400 and len(answer.content) < 1000, (name, answer.text[:300])
        assert peak < 16 * MiB, (name, peak)
        reliability.record(f"hostile_bodies_{name}", figures)


def test_uploads_cost_constant_memory(plane: Plane, reliability: ReliabilityRun) -> None:
    """Uploads of growing size over real HTTP: the peak of Python memory during each (its body
    streams to a temporary file, is checked a line at a time and streams to the store)."""
    headers = {"Authorization": f"Bearer {plane.keys['acme']['all']}"}
    sizes = [1 * MiB, 4 * MiB] + ([16 * MiB, 60 * MiB] if reliability.full else [])
    with serving(plane.http.app) as url:
        for size in sizes:
            tracemalloc.start()
            try:
                made = httpx.post(f"{url}/v1/files", content=rows_of(size), headers=headers, timeout=600)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert made.status_code == 201, made.text
            stored = made.json()["bytes"]
            figures = {
                "bytes": stored,
                "peak_mib": round(peak / MiB, 2),
                "peak_per_upload_byte": peak / stored,
            }
            reliability.record(f"hostile_upload_memory_{size // MiB}_mib", figures)
            assert peak < 8 * MiB


def test_slow_clients_hold_only_their_tenants_share(
    make_plane: Callable[..., Plane], reliability: ReliabilityRun
) -> None:
    """20 clients of one tenant sending an upload a row every 0.5 s against one control replica with
    the default limits, while another tenant lists its jobs: how many the replica held (the rest got
    429 with Retry-After) and the other tenant's latency idle and during the attack (the issue: 5
    such clients made every other tenant's request time out)."""
    plane = make_plane()
    ctx: ControlContext = plane.http.app.state.control  # type: ignore[attr-defined]
    slow = reliability.size(20, 20)
    probes = reliability.size(30, 200)

    def auth(tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {plane.keys[tenant]['all']}"}

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield ROW
            await asyncio.sleep(0.5)

    async def latencies(client: httpx.AsyncClient) -> list[float]:
        out = []
        for _ in range(probes):
            started = time.perf_counter()
            answer = await client.get("/v1/jobs", headers=auth("globex"))
            out.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
        return out

    async def scenario(url: str) -> dict[str, object]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            idle = await latencies(client)
            attack = [
                asyncio.create_task(client.post("/v1/files", content=trickle(), headers=auth("acme")))
                for _ in range(slow)
            ]
            await asyncio.sleep(1.0)
            held = ctx.slots.held("acme")[0]
            during = await latencies(client)
            answers = await asyncio.gather(*attack)
        statuses = [a.status_code for a in answers]
        return {
            "slow_clients": slow,
            "held_by_the_replica": held,
            "refused_429": statuses.count(429),
            "completed_201": statuses.count(201),
            "max_requests_per_tenant": ctx.config.limits.max_requests,
            "other_tenant_requests": probes,
            "other_tenant_p50_ms_idle": round(statistics.median(idle) * 1000, 1),
            "other_tenant_p99_ms_idle": round(_p99(idle) * 1000, 1),
            "other_tenant_p50_ms_attack": round(statistics.median(during) * 1000, 1),
            "other_tenant_p99_ms_attack": round(_p99(during) * 1000, 1),
        }

    with serving(plane.http.app) as url:
        figures = asyncio.run(scenario(url))
    assert figures["held_by_the_replica"] == ctx.config.limits.max_requests
    assert figures["refused_429"] == slow - ctx.config.limits.max_requests
    reliability.record("hostile_slow_clients", figures)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
