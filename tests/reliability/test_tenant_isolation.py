"""Tenant isolation: tenants A and B own adapters of the SAME names; A's key reaches none of B's through
any endpoint, and B's existing private adapter answers A exactly like a name that does not exist."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.reliability_fixtures import ReliabilityRun
from tests.serve_fixtures import ServeStack, SideApp, make_adapter
from ulpt.errors import NotFoundError, SpecError

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]

A, B = "alpha", "beta"
SHARED = ["twin-0", "twin-1", "twin-2"]
"""Names both tenants own; B has two versions of each, A one."""
IGNORED_HEADERS = {"date", "x-request-id"}
"""Headers that differ between any two answers."""


@dataclass
class IsoApp:
    side: SideApp
    keys: dict[str, str]

    @property
    def url(self) -> str:
        return self.side.url

    @property
    def home(self) -> Path:
        return self.side.home

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


@pytest.fixture(scope="module")
def iso_app(side_app: SideApp) -> IsoApp:
    base = side_app.base_model
    index = iter(range(10, 100))
    with side_app.client(A) as alpha:
        for name in SHARED:
            alpha.adapters.register(make_adapter(64, next(index), base), name=name)
        alpha.adapters.alias("prod", "twin-0:1")
    with side_app.client(B) as beta:
        for name in SHARED:
            for _ in range(2):
                beta.adapters.register(make_adapter(64, next(index), base), name=name)
        beta.adapters.register(make_adapter(64, next(index), base), name="beta-only")
        beta.adapters.register(make_adapter(64, next(index), base), name="beta-public", public=True)
        beta.adapters.alias("prod", "twin-1:2")
        beta.adapters.alias("beta-alias", "beta-only:1")
    return IsoApp(side_app, {t: side_app.key(t) for t in (A, B)})


# References A must not reach: B's adapters by every spelling, and names that exist nowhere.
FOREIGN = [
    "beta/twin-0",
    "beta/twin-0:1",
    "beta/twin-0:2",
    "twin-0:2",  # B has version 2 of the name; A's own name stops at version 1
    "beta/prod",
    "beta-only",
    "beta-only:1",
    "beta/beta-only",
    "beta/beta-only:1",
    "beta-alias",
    "beta/beta-alias",
    "beta-public",  # public, but only under its owner's prefix
]
MISSING = ["no-such-adapter", "no-such-adapter:1", "beta/no-such-adapter", "gamma/twin-0", "twin-9"]


def _requests(model: str) -> dict[str, dict[str, Any]]:
    """Every way to use an adapter over HTTP: endpoint name -> JSON body."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    completion = {"model": model, "prompt": "hi", "max_tokens": 2}
    return {
        "completions": completion,
        "completions_stream": {**completion, "stream": True},
        "chat": chat,
        "chat_stream": {**chat, "stream": True},
    }


def _comparable(answer: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in answer.headers.items() if k.lower() not in IGNORED_HEADERS)
    return answer.status_code, answer.content, headers


def test_a_key_reaches_none_of_b_adapters_and_the_404_leaks_nothing(
    iso_app: IsoApp, serve_stack: ServeStack, reliability: ReliabilityRun
) -> None:
    served_before = set(serve_stack.handle(iso_app.side.name).stats.remote().result()["models"])
    attempts, successes = 0, 0
    answers: dict[str, set[tuple[int, bytes, tuple[tuple[str, str], ...]]]] = {}
    statuses: Counter[int] = Counter()
    with httpx.Client(timeout=60, headers=iso_app.headers(A)) as http:
        for ref in FOREIGN + MISSING:
            for endpoint, body in _requests(ref).items():
                path = "/v1/chat/completions" if endpoint.startswith("chat") else "/v1/completions"
                answer = http.post(f"{iso_app.url}{path}", json=body)
                attempts += 1
                statuses[answer.status_code] += 1
                successes += answer.status_code < 400
                status, content, headers = _comparable(answer)
                answers.setdefault(endpoint, set()).add((status, content, tuple(headers)))
        # A's own adapters of the same names work, and are A's (the stats name the owner).
        for ref in ["twin-0", "twin-0:1", "prod", "beta/beta-public"]:
            for endpoint, body in _requests(ref).items():
                path = "/v1/chat/completions" if endpoint.startswith("chat") else "/v1/completions"
                assert http.post(f"{iso_app.url}{path}", json=body).status_code == 200, (ref, endpoint)
        listed = http.get(f"{iso_app.url}/v1/models").json()["data"]
        # Per-adapter stats and batching are handle-only (operators, through Ray), never HTTP routes.
        for path in ("/stats", "/configure_batching", "/metrics", "/v1/stats"):
            for method in ("GET", "POST"):
                answer = http.request(method, f"{iso_app.url}{path}")
                attempts += 1
                statuses[answer.status_code] += 1
                successes += answer.status_code < 400
    stats = serve_stack.handle(iso_app.side.name).stats.remote().result()
    served = {label for label in set(stats["models"]) - served_before if label.startswith((f"{A}/", f"{B}/"))}

    assert successes == 0, statuses
    for endpoint, distinct in answers.items():
        assert len(distinct) == 1, f"{endpoint}: B's adapters and missing names got different answers"
        ((status, content, _),) = distinct
        assert status == 404 and json.loads(content)["error"]["code"] == "model_not_found"
    assert served == {"alpha/twin-0:1", "beta/beta-public:1"}, served  # what answered, by owner

    ids = {m["id"] for m in listed}
    assert ids == {iso_app.side.base_model, "prod", *(f"{n}:1" for n in SHARED), "beta/beta-public:1"}, ids
    assert not any(m.get("alias_of", "").startswith("twin-1:2") for m in listed)  # B's prod alias
    reliability.record(
        "tenant_isolation_http",
        {
            "foreign_or_missing_refs": len(FOREIGN) + len(MISSING),
            "endpoints": sorted(answers) + ["admin paths (stats, configure_batching, metrics)"],
            "attempts": attempts,
            "successes": successes,
            "status_counts": {str(k): v for k, v in statuses.items()},
            "distinct_404_answers_per_endpoint": {k: len(v) for k, v in answers.items()},
            "models_listed_for_a": len(ids),
            "b_private_in_a_listing": 0,
        },
    )


def _cli(*args: str) -> Any:
    from ulpt.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args))


def test_sdk_and_cli_scoped_to_a_show_none_of_b_private_adapters(
    iso_app: IsoApp, reliability: ReliabilityRun
) -> None:
    """The SDK and the CLI read the catalog directly: the tenant is a scope chosen by whoever holds the
    catalog's credentials (there is no key to check), so what this asserts is that every read scoped
    to A stays within A (plus public adapters where asked for), whatever names B uses."""
    attempts, successes = 0, 0
    with iso_app.side.client(A) as alpha:
        mine = {r.ref for r in alpha.adapters.iter()}
        with_public = {(r.tenant, r.ref) for r in alpha.adapters.iter(include_public=True)}
        aliases = {a: r.tenant for a, r in alpha.adapters.aliases()}
        assert mine == {f"{n}:1" for n in SHARED}
        assert with_public == {(A, f"{n}:1") for n in SHARED} | {(B, "beta-public:1")}
        assert aliases == {"prod": A}
        assert alpha.adapters.get("prod").tenant == A and alpha.adapters.get("twin-0").version == 1
        # B named as a filter narrows to B's public adapters, whatever the order or extra filters
        for query in (
            {},
            {"order_by": "name"},
            {"order_by": "-metrics.eval_accuracy"},
            {"name": "twin-0"},
            {"include_public": True},
            {"status": None},
        ):
            attempts += 1
            found = {(r.tenant, r.ref) for r in alpha.adapters.find(tenant=B, limit=100, **query)}
            assert found <= {(B, "beta-public:1")}, query
            successes += bool(found - {(B, "beta-public:1")})
        for ref in FOREIGN + MISSING:
            for action in (
                alpha.adapters.get,
                alpha.adapters.load,
                alpha.adapters.show,
                lambda r: alpha.adapters.delete(r if ":" in r else f"{r}:1"),
                lambda r: alpha.adapters.alias("stolen", r),
                lambda r: alpha.adapters.export(r, iso_app.home / "exported"),
            ):
                attempts += 1
                try:
                    action(ref)
                    successes += 1
                except (NotFoundError, SpecError):
                    pass
    assert successes == 0

    cli_home = ["--home", str(iso_app.home), "--tenant", A]
    listed = _cli("adapters", "list", "--json", *cli_home)
    assert listed.exit_code == 0, listed.output
    assert {(i["tenant"], i["ref"]) for i in json.loads(listed.output)["items"]} == {
        (A, f"{n}:1") for n in SHARED
    }
    public = json.loads(_cli("adapters", "list", "--json", "--public", *cli_home).output)["items"]
    assert {(i["tenant"], i["ref"]) for i in public if i["tenant"] != A} == {(B, "beta-public:1")}
    cli_refusals = 0
    for ref in FOREIGN:
        shown = _cli("adapters", "show", ref, "--json", *cli_home)
        attempts += 1
        cli_refusals += shown.exit_code != 0
        assert shown.exit_code != 0 or json.loads(shown.output)["tenant"] == A, ref
    twin = json.loads(_cli("adapters", "show", "twin-0", "--json", *cli_home).output)
    assert (twin["tenant"], twin["version"]) == (A, 1)
    reliability.record(
        "tenant_isolation_sdk_cli",
        {
            "sdk_cli_attempts_on_b_or_missing": attempts,
            "successes": successes,
            "cli_show_refusals": cli_refusals,
            "cli_show_attempts": len(FOREIGN),
            "a_listing_size": len(mine),
            "b_private_in_a_listing": 0,
        },
    )
    assert cli_refusals == len(FOREIGN)
