"""Where the catalog and the store are, resolved one way for the SDK, the job driver and the server.

Explicit URLs win, else ULPT_CATALOG_URL / ULPT_STORE_URL, else the embedded default under `home`
(ULPT_HOME, default ./.ulpt): `catalog.db` and `blobs/`. The embedded catalog creates and upgrades its
own schema; any other catalog must be upgraded with `ulpt db upgrade`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulpt.catalog.db import Catalog, open_catalog, sqlite_url
from ulpt.config import ulpt_home
from ulpt.registry.api import Registry
from ulpt.store import BlobStore, open_store


@dataclass(frozen=True)
class Locations:
    """A home folder and the catalog and store URLs given for it (None: the embedded default)."""

    home: Path
    given_catalog_url: str | None = None
    given_store_url: str | None = None

    @classmethod
    def resolve(
        cls,
        home: str | os.PathLike[str] | None = None,
        catalog_url: str | None = None,
        store_url: str | None = None,
    ) -> Locations:
        """Explicit values, else the environment, else the embedded default under `home`."""
        return cls(
            home=Path(home).expanduser() if home is not None else ulpt_home(),
            given_catalog_url=catalog_url or os.environ.get("ULPT_CATALOG_URL") or None,
            given_store_url=store_url or os.environ.get("ULPT_STORE_URL") or None,
        )

    @property
    def catalog_url(self) -> str:
        return self.given_catalog_url or sqlite_url(self.home / "catalog.db")

    @property
    def store_url(self) -> str:
        return self.given_store_url or str((self.home / "blobs").resolve())

    def open_catalog(self) -> Catalog:
        """The catalog; the embedded default upgrades its own schema, others must already be current."""
        return open_catalog(self.catalog_url, auto_upgrade=self.given_catalog_url is None)

    def open_store(self, **options: Any) -> BlobStore:
        return open_store(self.store_url, **options)

    def open_registry(self, **store_options: Any) -> Registry:
        """A registry over a newly opened catalog and store (the caller closes `registry.catalog`)."""
        return Registry(self.open_catalog(), self.open_store(**store_options))
