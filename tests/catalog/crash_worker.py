"""The process the crash test kills: registers adapters forever, alone and in bulk, until SIGKILL.

Bulk batches come in two sizes: small ones write their blobs before the catalog transaction, big
ones (`ulpt.registry.api._OVERLAP_FROM` or more) write them on a second thread while it runs, and
both must leave no row without its blob wherever they are killed.

Imported once by a multiprocessing forkserver (torch, ulpt and boto3 already loaded), so each victim
starts in milliseconds as a real, separate process.
"""

from __future__ import annotations

import random
from typing import Any

from ulpt.adapters import Adapter, AdapterSpec
from ulpt.registry import Registration
from ulpt.registry.api import _OVERLAP_FROM
from ulpt.sdk import Client
from ulpt.store.s3 import _boto3_session

# Load botocore's S3 model in the forkserver, so victims inherit it instead of each parsing it again.
_boto3_session().client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


_BIG_BATCH = _OVERLAP_FROM + 8


def register_forever(
    catalog_url: str, store_url: str, store_options: dict[str, Any], victim: int, ready: Any
) -> None:
    rng = random.Random(victim)
    client = Client(catalog_url=catalog_url, store_url=store_url, store_options=store_options)
    spec_seed = victim * 1_000_000
    i = 0
    while True:
        i += 1
        adapter = Adapter.create(
            AdapterSpec(n_tokens=4, rank=2, seed=spec_seed + i), 32, base_model="tiny-llama"
        )
        if rng.random() < 0.25:
            batch = [
                Registration(
                    Adapter.create(AdapterSpec(n_tokens=4, rank=2, seed=spec_seed + i * 100 + k), 32),
                    name=f"bulk-{victim}-{i}-{k}",
                    base_model="tiny-llama",
                    tags={"victim": str(victim)},
                    metrics={"eval_accuracy": rng.random()},
                )
                for k in range(rng.choice((5, _BIG_BATCH)))
            ]
            client.adapters.register_many(batch)
        else:
            client.adapters.register(
                adapter,
                name=f"victim-{victim}",
                tags={"victim": str(victim)},
                metrics={"eval_loss": rng.random()},
            )
        ready.set()
