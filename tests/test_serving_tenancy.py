"""API keys in a replica: a revoked key is refused from the very next request, a refused key is
remembered (so a flood of bad keys costs one catalog query each), a valid one is never cached."""

from __future__ import annotations

from pathlib import Path

from ulpt.catalog.api_keys import revoke_api_key
from ulpt.sdk import Client
from ulpt_serving.tenancy import Authenticator


def test_a_revoked_key_is_refused_on_the_next_request(tmp_path: Path) -> None:
    with Client(home=tmp_path / "home", tenant="acme") as client:
        new = client.keys.create("laptop")
        auth = Authenticator(client.registry, 30.0)  # the default TTL
        before = [auth.tenant_for(new.key) for _ in range(2)]  # (no key in assertion messages)
        with client.catalog.session() as session:
            revoke_api_key(session, "acme", new.id)
        after = auth.tenant_for(new.key)
        assert before == ["acme", "acme"] and after is None


def test_refusals_are_remembered_and_acceptances_are_not(tmp_path: Path) -> None:
    with Client(home=tmp_path / "home", tenant="acme") as client:
        good = client.keys.create().key
        bad = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
        auth = Authenticator(client.registry, 30.0)
        queries = 0
        read = client.registry.catalog.read

        def counting():  # type: ignore[no-untyped-def]
            nonlocal queries
            queries += 1
            return read()

        client.registry.catalog.read = counting  # type: ignore[method-assign]
        answers = [(auth.tenant_for(bad), auth.tenant_for(good)) for _ in range(3)]
        assert answers == [(None, "acme")] * 3
        assert queries == 1 + 3  # the bad key once, the good key every time
