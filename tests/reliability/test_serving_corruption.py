"""Corruption in serving: stored adapters damaged under a running server (a flipped byte, a truncated or
missing blob, another adapter's bytes, a seed or rank edited in the blob's config or in the catalog
row). Each damaged adapter gets a prompt JSON error that says its stored data failed checks; the other
adapters keep answering in the same batches and later ones, and a repaired blob serves again (failures
are not cached)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.reliability_fixtures import ReliabilityRun
from tests.serve_fixtures import ServeStack, SideApp, make_adapter
from ulpt.catalog.models import AdapterRow
from ulpt.sdk import Client
from ulpt.store import LocalStore

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]

TENANT = "corrupt"
GOOD = [f"good-{i}" for i in range(4)]
ULPT_INDEXES = [200, 203, 205, 208]
"""make_adapter indexes that give ULPT adapters (a seed and a projection fingerprint to check)."""


def _blob_path(client: Client, key: str) -> Path:
    store = client.store
    assert isinstance(store, LocalStore)
    return store.root / key


def _write(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)  # the store writes blobs read-only
    path.write_bytes(data)


def _edit_config(blob: bytes, **changes: Any) -> bytes:
    """The blob with fields of the adapter_config in its safetensors header changed (tensors untouched)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    config = json.loads(header["__metadata__"]["adapter_config"])
    config.update(changes)
    header["__metadata__"]["adapter_config"] = json.dumps(config)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the data 8-byte aligned
    return struct.pack("<Q", len(text)) + text + blob[8 + length :]


def _repoint(client: Client, name: str, data: bytes) -> None:
    """Store `data` as a blob of its own and point `name`'s catalog row at it, hash and all: damage that
    the SHA-256 check cannot see, left to the format and projection-fingerprint checks."""
    info = client.store.put(data)
    with client.catalog.session() as session:
        session.execute(
            update(AdapterRow)
            .where(AdapterRow.tenant == TENANT, AdapterRow.name == name)
            .values(blob_key=info.key, blob_sha256=info.sha256, blob_size=info.size)
        )


def _edit_row(client: Client, name: str, **values: Any) -> None:
    """Change catalog columns of `name`'s row (the blob stays intact)."""
    with client.catalog.session() as session:
        session.execute(
            update(AdapterRow).where(AdapterRow.tenant == TENANT, AdapterRow.name == name).values(**values)
        )


def _flip_byte(client: Client, path: Path, blob: bytes, other: bytes, name: str) -> None:
    data = bytearray(blob)
    data[len(data) // 2] ^= 0x01
    _write(path, bytes(data))


CORRUPTIONS: dict[str, Callable[[Client, Path, bytes, bytes, str], None]] = {
    "flipped_byte": _flip_byte,
    "truncated_blob": lambda c, path, blob, other, name: _write(path, blob[: len(blob) // 2]),
    "missing_blob": lambda c, path, blob, other, name: path.unlink(),
    "other_adapters_bytes_in_place": lambda c, path, blob, other, name: _write(path, other),
    "seed_edited_in_config": lambda c, path, blob, other, name: _repoint(c, name, _edit_config(blob, seed=7)),
    "rank_edited_in_config": lambda c, path, blob, other, name: _repoint(c, name, _edit_config(blob, rank=2)),
    "row_points_at_other_adapters_blob": lambda c, path, blob, other, name: _repoint(c, name, other),
    "seed_edited_in_catalog": lambda c, path, blob, other, name: _edit_row(c, name, seed=7),
    "rank_edited_in_catalog": lambda c, path, blob, other, name: _edit_row(c, name, rank=2),
}


SHA, FORMAT, FINGERPRINT = "recorded SHA-256", "do not describe one valid adapter", "projection fingerprint"
REASONS = {
    "flipped_byte": SHA,
    "truncated_blob": SHA,
    "missing_blob": "missing from the store",
    "other_adapters_bytes_in_place": SHA,
    "seed_edited_in_config": FINGERPRINT,
    "rank_edited_in_config": FORMAT,
    "row_points_at_other_adapters_blob": FINGERPRINT,
    "seed_edited_in_catalog": FORMAT,
    "rank_edited_in_catalog": FORMAT,
}
"""The check each damage fails, as the error message names it."""


@dataclass
class CorruptApp:
    side: SideApp
    key: str
    blobs: dict[str, bytes]
    """victim name -> its original blob"""
    donor: bytes
    """A healthy adapter's blob, for the damage that puts another adapter's bytes in place."""

    @property
    def url(self) -> str:
        return self.side.url

    def body(self, model: str) -> dict[str, Any]:
        return {"model": model, "prompt": "the movie was good. A:", "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def corrupt_app(side_app: SideApp) -> CorruptApp:
    """Healthy adapters and one victim per kind of damage, in the side app's own catalog and store."""
    blobs: dict[str, bytes] = {}
    with side_app.client(TENANT) as client:
        for name, index in zip(GOOD, ULPT_INDEXES):
            good = client.adapters.register(make_adapter(64, index, side_app.base_model), name=name)
        donor = client.store.get(good.blob_key)
        for i, corruption in enumerate(CORRUPTIONS):
            adapter = make_adapter(64, 100 + 5 * i, side_app.base_model)  # index % 5 == 0: ULPT
            record = client.adapters.register(adapter, name=corruption.replace("_", "-"))
            blobs[record.name] = client.store.get(record.blob_key)
    return CorruptApp(side_app, side_app.key(TENANT), blobs, donor)


async def _post_all(app: CorruptApp, models: list[str]) -> dict[str, httpx.Response]:
    headers = {"Authorization": f"Bearer {app.key}"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as http:
        answers = await asyncio.gather(
            *(http.post(f"{app.url}/v1/completions", json=app.body(m)) for m in models)
        )
    return dict(zip(models, answers))


def test_damaged_adapters_get_a_clear_error_and_the_others_keep_serving(
    corrupt_app: CorruptApp, serve_stack: ServeStack, reliability: ReliabilityRun
) -> None:
    handle = serve_stack.handle(corrupt_app.side.name)
    failed_before = handle.stats.remote().result()["cache"]["failed_fetches"]
    before = asyncio.run(_post_all(corrupt_app, GOOD))
    assert all(a.status_code == 200 for a in before.values())
    expected = {name: a.json()["choices"][0]["text"] for name, a in before.items()}

    victims = {corruption: corruption.replace("_", "-") for corruption in CORRUPTIONS}
    with corrupt_app.side.client(TENANT) as client:
        for corruption, name in victims.items():
            path = _blob_path(client, client.adapters.get(name).blob_key)
            CORRUPTIONS[corruption](client, path, corrupt_app.blobs[name], corrupt_app.donor, name)

    # Damaged and healthy adapters together, twice: the same batches, then later ones.
    outcomes: dict[str, dict[str, Any]] = {}
    for _ in range(2):
        answers = asyncio.run(_post_all(corrupt_app, [*GOOD, *victims.values()]))
        for name in GOOD:
            assert answers[name].status_code == 200, answers[name].text
            assert answers[name].json()["choices"][0]["text"] == expected[name]
        for corruption, name in victims.items():
            answer = answers[name]
            assert answer.status_code == 500, (corruption, answer.status_code, answer.text)
            error = answer.json()["error"]
            assert error["type"] == "server_error"
            assert f"adapter {name!r} could not be loaded: its stored data failed checks" in error["message"]
            assert REASONS[corruption] in error["message"], (corruption, error["message"])
            outcomes[corruption] = {"status": answer.status_code, "message": error["message"]}

    # A repaired blob serves again: a failed fetch is reported, never cached.
    with corrupt_app.side.client(TENANT) as client:
        record = client.adapters.get(victims["flipped_byte"])
        _write(_blob_path(client, record.blob_key), corrupt_app.blobs[victims["flipped_byte"]])
    repaired = asyncio.run(_post_all(corrupt_app, [victims["flipped_byte"], *GOOD]))
    assert all(a.status_code == 200 for a in repaired.values()), {k: a.text for k, a in repaired.items()}

    failed_fetches = handle.stats.remote().result()["cache"]["failed_fetches"] - failed_before
    reliability.record(
        "serving_corruption",
        {
            "corruptions": outcomes,
            "healthy_adapters": len(GOOD),
            "healthy_requests_ok": 3 * len(GOOD) + len(GOOD),
            "healthy_requests_failed": 0,
            "failed_fetches": failed_fetches,
            "repaired_blob_served_again": True,
        },
    )
    assert failed_fetches == 2 * len(victims)  # each request for a damaged adapter checked it afresh
