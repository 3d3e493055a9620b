"""Registration, references, aliases, deletion and lineage, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from ulpt.adapters import Adapter
from ulpt.errors import ConflictError, InvalidNameError, NotFoundError, SpecError
from ulpt.registry import Registration
from ulpt.sdk import Client

MakeAdapter = Callable[..., Adapter]


def test_register_records_every_field_and_loads_back(client: Client, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(7)
    record = client.adapters.register(
        adapter,
        name="user-42",
        tags={"task": "sst2", "reviewed": ""},
        metrics={"eval_accuracy": 0.91, "eval_loss": 0.3, "notes": "ok"},
        dataset_fingerprint="sha256:abc",
        training_config={"lr": 0.3, "steps": 100},
    )
    assert (record.name, record.version, record.ref, record.tenant) == ("user-42", 1, "user-42:1", "default")
    assert (record.method, record.n_tokens, record.rank, record.seed, record.hidden_size) == (
        "ulpt",
        4,
        2,
        7,
        32,
    )
    assert record.base_model == "tiny-llama"
    assert record.num_trainable_params == adapter.num_trainable_params == 4 * 2 + 2 * 32
    assert record.projection_fingerprint == adapter.projection_fingerprint
    assert record.generator_version == 1 and record.projection == "xavier_uniform"
    assert record.blob_key.endswith(record.blob_sha256[2:]) and record.blob_size == len(adapter.to_bytes())
    assert record.tags == {"task": "sst2", "reviewed": ""}
    assert record.metrics["eval_accuracy"] == 0.91 and record.training_config == {"lr": 0.3, "steps": 100}
    assert record.status == "ready" and record.deleted_at is None and record.created_at.tzinfo is not None

    fetched = client.adapters.get("user-42")
    assert fetched == record
    loaded = fetched.load()
    assert torch.equal(loaded.prompt_embeddings(), adapter.prompt_embeddings())
    assert loaded.base_model == "tiny-llama"


def test_versions_auto_increment_and_refs_resolve(client: Client, make_adapter: MakeAdapter) -> None:
    refs = [client.adapters.register(make_adapter(seed), name="a").ref for seed in range(3)]
    assert refs == ["a:1", "a:2", "a:3"]
    assert client.adapters.get("a").version == 3
    assert client.adapters.get("a:latest").version == 3
    assert client.adapters.get("a:2").seed == 1
    assert client.adapters.register(make_adapter(9), name="a", version=10).version == 10
    assert client.adapters.register(make_adapter(10), name="a").version == 11


def test_duplicate_name_version_is_a_conflict(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(1), name="dup", version=1)
    with pytest.raises(ConflictError, match=r"dup:1 already exists"):
        client.adapters.register(make_adapter(2), name="dup", version=1)
    assert [r.seed for r in client.adapters.find(name="dup")] == [1]


def test_versions_stay_within_the_catalog_column(client: Client, make_adapter: MakeAdapter) -> None:
    """PostgreSQL's version column is 32-bit: the last version is accepted, the one after is refused."""
    last = 2**31 - 1
    assert client.adapters.register(make_adapter(1), name="top", version=last).version == last
    assert client.adapters.get(f"top:{last}").version == last
    with pytest.raises(ConflictError, match=rf"top has used every version up to {last}"):
        client.adapters.register(make_adapter(2), name="top")
    with pytest.raises(SpecError, match=rf"version must be an integer in \[1, {last}\]"):
        client.adapters.register(make_adapter(3), name="other", version=last + 1)
    assert [r.version for r in client.adapters.find(name="top")] == [last]


@pytest.mark.parametrize("name", ["", "has space", "-leading", "a:b", "x/y", "é", "a" * 129, None])
def test_invalid_names_are_refused_before_any_write(
    client: Client, make_adapter: MakeAdapter, name: object
) -> None:
    with pytest.raises(InvalidNameError, match="invalid adapter name"):
        client.adapters.register(make_adapter(1), name=name)  # type: ignore[arg-type]
    assert not list(client.store.list_blobs())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {"eval_loss": float("nan")}}, "finite"),
        ({"metrics": {"bad name": 1.0}}, "invalid metric name"),
        ({"tags": {"k=v": "x"}}, "invalid tag key"),
        ({"tags": "just-a-string"}, "mapping or a list"),
        ({"version": 0}, r"version must be an integer in \[1, 2147483647\]"),
        ({"base_model": "other-model"}, "is not the adapter's"),
        ({"training_config": {"x": object()}}, "must be JSON"),
    ],
)
def test_bad_registration_input(
    client: Client, make_adapter: MakeAdapter, kwargs: dict, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        client.adapters.register(make_adapter(1), name="x", **kwargs)


def test_hidden_size_must_match_the_base_model(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(1), name="a")
    with pytest.raises(ConflictError, match="hidden size 64 does not match base model 'tiny-llama'"):
        client.adapters.register(make_adapter(2, hidden=64), name="b")


def test_unknown_references(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(1), name="a")
    with pytest.raises(NotFoundError, match="no adapter or alias named 'prod'"):
        client.adapters.get("prod")
    with pytest.raises(NotFoundError, match="no adapter 'a:5'"):
        client.adapters.get("a:5")
    with pytest.raises(InvalidNameError, match="invalid adapter reference"):
        client.adapters.get("a::1")


def test_alias_set_move_rollback_remove(client: Client, make_adapter: MakeAdapter) -> None:
    for seed in range(2):
        client.adapters.register(make_adapter(seed), name="m")
    change = client.adapters.alias("prod", "m:1")
    assert (change.target.ref, change.previous) == ("m:1", None)
    assert client.adapters.get("prod").ref == "m:1"
    change = client.adapters.alias("prod", "m:2")  # promote
    assert (change.target.ref, change.previous) == ("m:2", "m:1")
    assert client.adapters.get("prod").ref == "m:2"
    assert client.adapters.rollback("prod").target.ref == "m:1"
    assert client.adapters.get("prod").ref == "m:1"
    assert client.adapters.rollback("prod").target.ref == "m:2"  # rollback toggles
    assert [(a, r.ref) for a, r in client.adapters.aliases()] == [("prod", "m:2")]
    client.adapters.unalias("prod")
    with pytest.raises(NotFoundError):
        client.adapters.get("prod")
    with pytest.raises(NotFoundError, match="no alias named 'prod'"):
        client.adapters.rollback("prod")


def test_alias_and_adapter_names_do_not_collide(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(1), name="m")
    with pytest.raises(ConflictError, match="already an adapter name"):
        client.adapters.alias("m", "m:1")
    client.adapters.alias("prod", "m:1")
    with pytest.raises(ConflictError, match="is an alias"):
        client.adapters.register(make_adapter(2), name="prod")
    with pytest.raises(InvalidNameError):
        client.adapters.alias("bad alias", "m:1")


def test_delete_is_a_tombstone(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(1), name="d")
    client.adapters.register(make_adapter(2), name="d")
    with pytest.raises(SpecError, match="without a version"):
        client.adapters.delete("d")
    deleted = client.adapters.delete("d:2")
    assert [(r.ref, r.status) for r in deleted] == [("d:2", "deleted")] and deleted[0].deleted_at is not None
    assert client.adapters.get("d").ref == "d:1"  # the latest live version
    with pytest.raises(NotFoundError, match="was deleted"):
        client.adapters.get("d:2")
    assert [r.ref for r in client.adapters.find(status="deleted")] == ["d:2"]
    assert client.adapters.show("d:2").record.status == "deleted"
    assert client.adapters.register(make_adapter(3), name="d").version == 3  # numbers are never reused
    client.adapters.delete("d", all_versions=True)
    with pytest.raises(NotFoundError, match="every version of adapter 'd' was deleted"):
        client.adapters.get("d")


def test_delete_refuses_an_aliased_adapter_unless_forced(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(1), name="d")
    client.adapters.alias("prod", "d:1")
    with pytest.raises(ConflictError, match="alias 'prod' points at d:1"):
        client.adapters.delete("d:1")
    assert client.adapters.get("prod").status == "ready"
    client.adapters.delete("d:1", force=True)
    with pytest.raises(NotFoundError):
        client.adapters.get("prod")


def test_lineage_parent_job_children(client: Client, make_adapter: MakeAdapter) -> None:
    from ulpt.catalog.jobs import create_job

    with client.catalog.session() as session:
        job_id = str(create_job(session, "default", {"method": "ulpt"}, name="nightly").id)
    parent = client.adapters.register(
        make_adapter(1), name="base-task", job_id=job_id, dataset_fingerprint="d1"
    )
    child = client.adapters.register(make_adapter(2), name="user-1", parent="base-task:1")
    assert child.parent_id == parent.id
    lineage = client.adapters.show("base-task")
    assert lineage.job == {"id": job_id, "name": "nightly", "status": "pending"}
    assert [c.ref for c in lineage.children] == ["user-1:1"] and lineage.parent is None
    assert client.adapters.show("user-1").parent.ref == "base-task:1"  # type: ignore[union-attr]
    assert [r.ref for r in client.adapters.find(job_id=job_id)] == ["base-task:1"]
    with pytest.raises(NotFoundError):
        client.adapters.register(make_adapter(3), name="x", parent="missing:1")
    with pytest.raises(NotFoundError, match="no job"):
        client.adapters.register(make_adapter(3), name="x", job_id="00000000-0000-7000-8000-000000000000")


def test_tenants_are_isolated_and_public_adapters_are_shared(
    client: Client, make_adapter: MakeAdapter
) -> None:
    other = Client(
        home=client.home, catalog_url=client.catalog_url, store_url=client.store_url, tenant="acme"
    )
    try:
        other.adapters.register(make_adapter(1), name="secret")
        other.adapters.register(make_adapter(2), name="shared", public=True)
        with pytest.raises(NotFoundError):
            client.adapters.get("secret")
        with pytest.raises(NotFoundError, match="no adapter or alias"):
            client.adapters.get("acme/secret")  # private: reads exactly like a missing adapter
        shared = client.adapters.get("acme/shared:1")
        assert shared.tenant == "acme" and shared.load().spec.seed == 2
        assert list(client.adapters.find()) == []
        assert [r.name for r in client.adapters.find(include_public=True)] == ["shared"]
        # naming another tenant narrows to its public adapters; its private ones stay out of reach
        assert [r.name for r in client.adapters.find(tenant="acme", order_by="name")] == ["shared"]
        with pytest.raises(NotFoundError):
            client.adapters.delete("acme/shared:1")
    finally:
        other.close()


def test_register_many_is_all_or_nothing(client: Client, make_adapter: MakeAdapter) -> None:
    client.adapters.register(make_adapter(0), name="b", version=2)
    batch = [Registration(make_adapter(i), name=f"bulk-{i}", tags={"batch": "1"}) for i in range(20)]
    with pytest.raises(ConflictError, match="b:2 already exists"):
        client.adapters.register_many([*batch, Registration(make_adapter(99), name="b", version=2)])
    assert list(client.adapters.find(tags={"batch": "1"})) == []
    records = client.adapters.register_many(batch)
    assert [r.ref for r in records] == [f"bulk-{i}:1" for i in range(20)]
    assert len(client.adapters.find(tags={"batch": "1"}, limit=100)) == 20
    with pytest.raises(ConflictError, match="appears twice"):
        client.adapters.register_many([Registration(make_adapter(1), "z", version=1)] * 2)


def test_concurrent_registrations_get_distinct_versions(client: Client, make_adapter: MakeAdapter) -> None:
    """Writers racing on one name (alone, and inside large batches) all succeed with distinct versions."""
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            if i % 4 == 0:  # a batch big enough to take the tenant-wide lock
                batch = [Registration(make_adapter(100 * i + k), name=f"race-{k}") for k in range(20)]
                client.adapters.register_many([*batch, Registration(make_adapter(i), name="race")])
            else:
                client.adapters.register(make_adapter(i), name="race")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.version for r in client.adapters.find(name="race")) == list(range(1, 13))
    assert sorted(r.version for r in client.adapters.find(name="race-7")) == [1, 2, 3]


def test_register_precomputed_blobs(client: Client, make_adapter: MakeAdapter) -> None:
    """The bulk path takes `to_bytes()` blobs; the record comes from the blob's own config."""
    adapter = make_adapter(11, method="dpt", rank=3)
    record = client.adapters.register_many([Registration(adapter.to_bytes(), name="blob", tags=["x"])])[0]
    assert (record.method, record.rank, record.seed, record.base_model) == ("dpt", 3, 11, "tiny-llama")
    assert record.num_trainable_params == adapter.num_trainable_params
    assert torch.equal(record.load().prompt_embeddings(), adapter.prompt_embeddings())
    from ulpt.errors import AdapterFormatError

    with pytest.raises(AdapterFormatError, match="not a ulpt adapter blob"):
        client.adapters.register(b"\x00" * 64, name="junk")
    with pytest.raises(SpecError, match="ulpt.Adapter"):
        client.adapters.register("not an adapter", name="junk")  # type: ignore[arg-type]
