"""Corrupted or substituted adapters are refused when the SDK loads them, each with an error naming it.

`test_integrity.py` covers one flipped byte, a missing blob and a changed catalog fingerprint; here:
flips at many positions, a changed seed or rank in the blob's own config (in place, or stored as a
consistent blob the catalog points at), the catalog's copy of seed or rank changed, and another
adapter's blob put in its place. What no check can catch is left out on purpose: a catalog row
rewritten to name another adapter's blob (key and SHA-256 both) of the same seed and shape *is* that
adapter as far as the catalog, the source of truth, is concerned.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sqlalchemy import update

from tests.catalog.test_integrity import _overwrite
from tests.reliability_fixtures import ReliabilityRun
from ulpt.adapters import Adapter
from ulpt.catalog.models import AdapterRow
from ulpt.errors import AdapterFormatError, BlobIntegrityError, FingerprintMismatchError, UlptError
from ulpt.registry import AdapterRecord
from ulpt.sdk import Client

pytestmark = pytest.mark.reliability
MakeAdapter = Callable[..., Adapter]


def _with_config(blob: bytes, **changes: Any) -> bytes:
    """The blob with fields of the adapter_config in its safetensors header changed (tensors untouched)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    config = {**json.loads(header["__metadata__"]["adapter_config"]), **changes}
    header["__metadata__"]["adapter_config"] = json.dumps(config)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + length :]


def _point_at(client: Client, name: str, blob: bytes) -> None:
    """Store `blob` as a blob of its own and make the catalog row `name` name it (key and SHA-256)."""
    info = client.store.put(blob)
    with client.catalog.session() as session:
        session.execute(
            update(AdapterRow)
            .where(AdapterRow.name == name)
            .values(blob_key=info.key, blob_sha256=info.sha256, blob_size=info.size)
        )


def _set_row(client: Client, name: str, **values: Any) -> None:
    with client.catalog.session() as session:
        session.execute(update(AdapterRow).where(AdapterRow.name == name).values(**values))


def _refusal(client: Client, ref: str) -> type[UlptError]:
    """The error class loading `ref` through the SDK raises; fails if it loads or says nothing of `ref`."""
    with pytest.raises(UlptError) as info:
        client.adapters.load(ref)
    assert f"adapter {ref}" in str(info.value), str(info.value)
    return type(info.value)


def _trained(make_adapter: MakeAdapter, seed: int, delta: float) -> Adapter:
    """An adapter whose learned tensors moved away from their initialization (as after training)."""
    adapter = make_adapter(seed)
    with torch.no_grad():
        for param in adapter.params.values():
            param.add_(delta)
    return adapter


@pytest.fixture()
def victim(stack: Client, make_adapter: MakeAdapter) -> AdapterRecord:
    return stack.adapters.register(_trained(make_adapter, 7, 0.5), name="victim")


def test_flipped_bytes_anywhere_in_the_blob_are_refused(
    stack: Client, victim: AdapterRecord, request: pytest.FixtureRequest, reliability: ReliabilityRun
) -> None:
    blob = stack.store.get(victim.blob_key)
    count = reliability.size(12, len(blob))
    positions = sorted({0, len(blob) - 1, *random.Random(0).sample(range(len(blob)), count)})[:count]
    errors = []
    for position in positions:
        data = bytearray(blob)
        data[position] ^= 1 << (position % 8)
        _overwrite(stack, victim.blob_key, bytes(data), request)
        errors.append(_refusal(stack, "victim:1"))
    _overwrite(stack, victim.blob_key, blob, request)
    assert set(errors) == {BlobIntegrityError}
    assert stack.adapters.load("victim:1") is not None  # the original bytes load again
    flips = f"one bit flipped at {len(positions)} of the blob's {len(blob)} bytes"
    _record(request, reliability, "byte_flips", flips, errors)


@pytest.mark.parametrize("field", ["seed", "rank"])
def test_changed_seed_or_rank_in_the_blob_config_is_refused(
    stack: Client,
    victim: AdapterRecord,
    field: str,
    request: pytest.FixtureRequest,
    reliability: ReliabilityRun,
) -> None:
    blob = stack.store.get(victim.blob_key)
    changes: dict[str, Any] = {"seed": victim.seed + 1}
    if field == "rank":  # a consistent header: parameter count follows the rank, only the tensors disagree
        changes = {
            "rank": victim.rank + 1,
            "num_trainable_params": victim.num_trainable_params + victim.n_tokens,
        }
    tampered = _with_config(blob, **changes)

    _overwrite(stack, victim.blob_key, tampered, request)  # in place: the SHA-256 no longer matches
    in_place = _refusal(stack, "victim:1")
    _overwrite(stack, victim.blob_key, blob, request)

    _point_at(stack, "victim", tampered)  # a well-stored blob whose config lies about its tensors
    _set_row(stack, "victim", **{field: changes[field]})  # and a catalog that agrees with the lie
    repointed = _refusal(stack, "victim:1")

    registered = stack.adapters.register(tampered, name="tampered")  # the bulk path trusts the header...
    on_load = _refusal(stack, f"tampered:{registered.version}")  # ...and loading checks the tensors

    assert in_place is BlobIntegrityError
    if field == "seed":  # the seed regenerates another projection than the one recorded
        assert repointed is FingerprintMismatchError and on_load is FingerprintMismatchError
    else:  # the tensors' shapes do not fit the rank
        assert issubclass(repointed, AdapterFormatError) and issubclass(on_load, AdapterFormatError)
    _record(
        request,
        reliability,
        f"blob_config_{field}",
        f"{field} changed in the blob's config: rewritten in place, stored as its own blob the catalog "
        "names, registered through the SDK",
        [in_place, repointed, on_load],
    )


@pytest.mark.parametrize("field", ["seed", "rank"])
def test_changed_seed_or_rank_in_the_catalog_record_is_refused(
    stack: Client,
    victim: AdapterRecord,
    field: str,
    request: pytest.FixtureRequest,
    reliability: ReliabilityRun,
) -> None:
    _set_row(stack, "victim", **{field: getattr(victim, field) + 1})
    with pytest.raises(AdapterFormatError, match=rf"adapter victim:1: its blob does not match .*{field}"):
        stack.adapters.load("victim:1")
    _record(
        request, reliability, f"catalog_{field}", f"{field} changed in the catalog row", [AdapterFormatError]
    )


def test_another_adapters_blob_in_its_place_is_refused(
    stack: Client,
    victim: AdapterRecord,
    make_adapter: MakeAdapter,
    request: pytest.FixtureRequest,
    reliability: ReliabilityRun,
) -> None:
    twin = stack.adapters.register(_trained(make_adapter, 7, -0.5), name="twin")  # same seed and shape
    other = stack.adapters.register(_trained(make_adapter, 8, 0.5), name="other")  # another seed
    original = stack.store.get(victim.blob_key)
    assert twin.blob_key != victim.blob_key and twin.projection_fingerprint == victim.projection_fingerprint

    _overwrite(stack, victim.blob_key, stack.store.get(twin.blob_key), request)  # bytes copied over it
    copied = _refusal(stack, "victim:1")
    _overwrite(stack, victim.blob_key, original, request)

    _set_row(stack, "victim", blob_key=twin.blob_key)  # the row names the twin's blob, its SHA-256 kept
    repointed = _refusal(stack, "victim:1")

    _set_row(stack, "victim", blob_key=other.blob_key, blob_sha256=other.blob_sha256)  # key and SHA-256
    repointed_with_hash = _refusal(stack, "victim:1")

    assert (copied, repointed) == (BlobIntegrityError, BlobIntegrityError)
    assert repointed_with_hash is FingerprintMismatchError  # the catalog's fingerprint is the victim's
    _record(
        request,
        reliability,
        "substituted_blob",
        "another adapter's blob: its bytes copied over, the row naming its key, the row naming its key "
        "and SHA-256 (another seed)",
        [copied, repointed, repointed_with_hash],
    )


def _record(
    request: pytest.FixtureRequest, reliability: ReliabilityRun, case: str, tampering: str, errors: list[type]
) -> None:
    """One section per case and stack (`sdk_corruption_<case>_<stack>`); the document makes one table."""
    stack = request.node.callspec.params["stack"]
    counts: dict[str, int] = {}
    for error in errors:
        counts[error.__name__] = counts.get(error.__name__, 0) + 1
    reliability.record(
        f"sdk_corruption_{case}_{stack.replace('+', '_')}",
        {
            "stack": stack,
            "tampering": tampering,
            "attempts": len(errors),
            "refused": len(errors),
            "errors": ", ".join(f"{name} x{n}" for name, n in counts.items()),
        },
    )
