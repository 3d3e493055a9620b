"""Each tenant's share of a control-plane replica, over real HTTP (uvicorn on a socket): slow clients
hold at most their own tenant's slots (beyond: 429 with Retry-After) while another tenant is served,
a body that stops arriving is cut with a 408, and the slots come back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.control.conftest import Plane
from tests.http_server import serving, stalled_post
from ulpt_control.context import ControlContext
from ulpt_serving.limits import TenantLimits, TenantSlots, TooMany

ROW = (json.dumps({"input": "a", "target": "b"}) + "\n").encode()


async def trickle(chunks: int, pause_s: float, started: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for index in range(chunks):
        if index == 1 and started is not None:
            started.set()
        yield ROW
        await asyncio.sleep(pause_s)


async def wait_until(check: Callable[[], bool]) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize(("most", "slow"), [(1, 1), (2, 2), (3, 3), (2, 5)])
def test_slow_clients_hold_only_their_tenants_share(
    make_plane: Callable[..., Plane], most: int, slow: int
) -> None:
    limits = TenantLimits(max_requests=most, body_idle_timeout_s=5.0, body_timeout_s=60.0, retry_after_s=2)
    plane = make_plane(limits=limits)
    ctx: ControlContext = plane.http.app.state.control  # type: ignore[attr-defined]

    def auth(tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {plane.keys[tenant]['all']}"}

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            uploads = [
                asyncio.create_task(client.post("/v1/files", content=trickle(8, 0.25), headers=auth("acme")))
                for _ in range(slow)
            ]
            await wait_until(lambda: ctx.slots.held("acme")[0] == most)
            refused = await client.get("/v1/files", headers=auth("acme"))
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "2"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            for path in ("/v1/files", "/v1/jobs", "/v1/adapters"):  # another tenant is served meanwhile
                assert (await client.get(path, headers=auth("globex"))).status_code == 200
            answers = await asyncio.gather(*uploads)
            assert sorted(a.status_code for a in answers) == sorted([201] * most + [429] * (slow - most))
            await wait_until(lambda: ctx.slots.held("acme") == (0, 0))
            assert (await client.get("/v1/files", headers=auth("acme"))).status_code == 200

    with serving(plane.http.app) as url:
        asyncio.run(scenario(url))


@pytest.mark.parametrize("idle_s", [0.5, 1.0])
@pytest.mark.parametrize(
    ("path", "kind"), [("/v1/files", "application/jsonl"), ("/v1/jobs", "application/json")]
)
def test_a_body_that_stops_arriving_is_cut_with_a_408(
    make_plane: Callable[..., Plane], idle_s: float, path: str, kind: str
) -> None:
    plane = make_plane(limits=TenantLimits(body_idle_timeout_s=idle_s, body_timeout_s=60.0))
    ctx: ControlContext = plane.http.app.state.control  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {plane.keys['acme']['all']}", "Content-Type": kind}
    with serving(plane.http.app) as url:
        status, body = stalled_post(url, path, headers, ROW[:10], declared=10_000)
    assert status == 408, body
    assert "arrived too slowly" in json.loads(body)["error"]["message"]
    assert ctx.slots.held("acme") == (0, 0)


def test_a_body_that_takes_too_long_in_all_is_cut(make_plane: Callable[..., Plane]) -> None:
    plane = make_plane(limits=TenantLimits(body_idle_timeout_s=5.0, body_timeout_s=1.0))
    headers = {"Authorization": f"Bearer {plane.keys['acme']['all']}"}
    with serving(plane.http.app) as url:  # a byte every 0.2 s: never idle for long, never done
        status, body = stalled_post(url, "/v1/files", headers, ROW * 2, len(ROW) * 2, pause_s=0.2)
    assert status == 408, body


@pytest.mark.parametrize("requests", [1, 3, 8])
@pytest.mark.parametrize("streams", [1, 2])
def test_slots_count_requests_and_streams_per_tenant(requests: int, streams: int) -> None:
    slots = TenantSlots(TenantLimits(max_requests=requests, max_streams=streams))
    for index in range(requests):
        slots.acquire("acme", stream=index < streams)
    with pytest.raises(TooMany, match=f"already has {requests} requests"):
        slots.acquire("acme")
    slots.acquire("globex", stream=True)  # another tenant has its own share
    if requests > streams:
        slots.release("acme")
        with pytest.raises(TooMany, match=f"already has {streams} streams"):
            slots.acquire("acme", stream=True)
        assert slots.held("acme") == (requests - 1, streams)
    for _ in range(streams):
        slots.release("acme", stream=True)
    assert slots.held("acme")[1] == 0
