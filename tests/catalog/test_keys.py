"""API keys through `client.keys` and `ulpt keys`: shown once, authenticating as the client's tenant,
never listed, revocable, and invisible to every other tenant. "Authenticates" means the lookup the
HTTP API makes for each bearer key (`verify_api_key`) answers with the tenant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.catalog.conftest import Cli
from ulpt.catalog import verify_api_key
from ulpt.catalog.models import ApiKeyRow
from ulpt.errors import InvalidNameError, NotFoundError, SpecError
from ulpt.sdk import Client


@pytest.fixture()
def tenants(client: Client) -> Iterator[tuple[Client, Client]]:
    """Clients of tenants acme and globex on one catalog."""
    url, home = client.catalog_url, client.home
    with (
        Client(home=home, catalog_url=url, tenant="acme") as acme,
        Client(home=home, catalog_url=url, tenant="globex") as globex,
    ):
        yield acme, globex


def tenant_of(client: Client, key: str) -> str | None:
    with client.catalog.read() as session:
        return verify_api_key(session, key)


def stored_hash(client: Client, key_id: str) -> str:
    with client.catalog.read() as session:
        return session.scalars(select(ApiKeyRow.key_hash).where(ApiKeyRow.id == key_id)).one()


def test_a_new_key_authenticates_as_the_clients_tenant(tenants: tuple[Client, Client]) -> None:
    acme, globex = tenants
    new = acme.keys.create("ci")
    assert (new.tenant, new.label) == ("acme", "ci") and new.key.startswith(f"ulpt_{new.id}_")
    assert new.key not in repr(new)
    assert tenant_of(acme, new.key) == "acme"
    assert tenant_of(globex, globex.keys.create().key) == "globex"
    with pytest.raises(TypeError):  # the tenant is who the client is, not something a caller picks
        acme.create_api_key("x", tenant="globex")  # type: ignore[call-arg]


def test_list_shows_id_name_and_times_never_the_key_or_its_hash(tenants: tuple[Client, Client]) -> None:
    acme, _ = tenants
    first, second = acme.keys.create("ci"), acme.keys.create()
    listed = acme.keys.list()
    assert [(k.id, k.name, k.tenant, k.revoked) for k in listed] == [
        (first.id, "ci", "acme", False),
        (second.id, None, "acme", False),
    ]
    assert listed[0].prefix == f"ulpt_{first.id}_" and listed[0].created_at is not None
    shown = repr(listed) + json.dumps([k.to_dict() for k in listed])
    for new in (first, second):
        assert new.key not in shown and new.key[len(f"ulpt_{new.id}_") :] not in shown
        assert stored_hash(acme, new.id) not in shown


def test_revoked_key_is_refused_and_listed_as_revoked(tenants: tuple[Client, Client]) -> None:
    acme, _ = tenants
    doomed, kept = acme.keys.create("old"), acme.keys.create("new")
    info = acme.keys.revoke(doomed.id)
    assert info.id == doomed.id and info.revoked and info.revoked_at is not None
    assert tenant_of(acme, doomed.key) is None and tenant_of(acme, kept.key) == "acme"
    assert acme.keys.revoke(doomed.id).revoked_at == info.revoked_at  # again: nothing changes
    assert {k.id: k.revoked_at for k in acme.keys.list()} == {doomed.id: info.revoked_at, kept.id: None}


def test_another_tenant_can_neither_see_nor_revoke_a_key(tenants: tuple[Client, Client]) -> None:
    acme, globex = tenants
    new = acme.keys.create("ci")
    assert globex.keys.list() == []
    with pytest.raises(NotFoundError) as theirs:
        globex.keys.revoke(new.id)
    with pytest.raises(NotFoundError) as unknown:
        globex.keys.revoke("ffffffffffff")
    assert str(theirs.value) == str(unknown.value).replace("ffffffffffff", new.id)  # reads like none
    assert tenant_of(acme, new.key) == "acme" and not acme.keys.list()[0].revoked


def test_a_whole_key_given_as_an_id_is_refused_without_repeating_it(tenants: tuple[Client, Client]) -> None:
    acme, _ = tenants
    new = acme.keys.create()
    with pytest.raises(SpecError) as info:
        acme.keys.revoke(new.key)
    assert new.key not in str(info.value) and new.id not in str(info.value)
    assert tenant_of(acme, new.key) == "acme"
    with pytest.raises(InvalidNameError, match="API key name"):
        acme.keys.create("has spaces; and more")


def test_cli_create_list_revoke(cli: Cli, tmp_path: Path) -> None:
    key = cli("keys", "create", "--name", "ci", "--tenant", "acme").strip()
    assert "only now" in cli.err and key not in cli.err
    created = cli.json("keys", "create", "--tenant", "acme")
    assert isinstance(created, dict) and created["tenant"] == "acme" and created["key"].startswith("ulpt_")
    with Client(home=tmp_path / "home", tenant="acme") as acme:  # ULPT_CATALOG_URL from the `cli` fixture
        assert tenant_of(acme, key) == "acme"
        first = acme.keys.list()[0]
        assert key.startswith(first.prefix) and first.name == "ci"
        key_hash = stored_hash(acme, first.id)

    table = cli("keys", "list", "--tenant", "acme")
    listed = cli.json("keys", "list", "--tenant", "acme")
    assert isinstance(listed, list) and [k["id"] for k in listed] == [first.id, created["id"]]
    for shown in (table, json.dumps(listed)):
        assert key not in shown and created["key"] not in shown and key_hash not in shown
    assert first.id in table and "ci" in table
    assert cli.json("keys", "list", "--tenant", "globex") == []

    err = cli("keys", "revoke", first.id, "--tenant", "globex", code=1)
    assert "no API key with id" in err
    assert "revoked" in cli("keys", "revoke", first.id, "--tenant", "acme")
    listed = cli.json("keys", "list", "--tenant", "acme")
    assert isinstance(listed, list) and [(k["id"], k["revoked"]) for k in listed] == [
        (first.id, True),
        (created["id"], False),
    ]
    with Client(home=tmp_path / "home", tenant="acme") as acme:
        assert tenant_of(acme, key) is None and tenant_of(acme, created["key"]) == "acme"
    err = cli("keys", "revoke", key, "--tenant", "acme", code=1)
    assert key not in err


@pytest.mark.parametrize("command", ["create", "list", "revoke"])
def test_cli_help_says_what_each_command_does(cli: Cli, command: str) -> None:
    text = cli("keys", command, "--help")
    assert {"create": "shown only", "list": "never the key", "revoke": "refuses it"}[command] in " ".join(
        text.split()
    )


def test_keys_carry_the_scopes_they_were_created_with(tenants: tuple[Client, Client], cli: Cli) -> None:
    acme, _ = tenants
    reader = acme.keys.create("dashboard", scopes=["read"])
    default = acme.keys.create("laptop")
    identities = [acme.registry.identity_for_key(k.key) for k in (reader, default)]
    assert [(i.tenant, sorted(i.scopes)) for i in identities if i] == [
        ("acme", ["read"]),
        ("acme", ["admin", "read", "train"]),
    ]
    assert [k.scopes for k in acme.keys.list()] == [("read",), ("read", "train", "admin")]
    with pytest.raises(SpecError, match="unknown scope"):
        acme.keys.create("x", scopes=["root"])
    with pytest.raises(SpecError, match="one or more"):
        acme.keys.create("x", scopes=[])
    made = cli.json("keys", "create", "--tenant", "acme", "--scope", "train", "--scope", "read")
    assert isinstance(made, dict) and made["scopes"] == ["read", "train"]


def test_keys_made_before_scopes_keep_every_scope_after_the_upgrade(tmp_path: Path) -> None:
    from sqlalchemy import text

    from ulpt.catalog.db import create_catalog_engine, open_catalog, sqlite_url
    from ulpt.catalog.migrate import upgrade

    url = sqlite_url(tmp_path / "old.db")
    engine = create_catalog_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (name) VALUES ('acme')"))
        conn.execute(
            text("INSERT INTO api_keys (id, tenant, key_hash) VALUES ('0123456789ab', 'acme', :h)"),
            {"h": "0" * 64},
        )
    upgrade(engine)
    engine.dispose()
    catalog = open_catalog(url)
    with catalog.read() as session:
        row = session.get(ApiKeyRow, "0123456789ab")
        assert row is not None and row.scopes == "read,train,admin"
    catalog.close()
