"""Options shared by the catalog commands (`adapters`, `db`, `gc`); each also reads an env variable."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

import typer

from ulpt.adapters import METHODS
from ulpt.errors import SpecError
from ulpt.sdk import Client

METHOD_NAMES = ", ".join(METHODS)
"""The adapter methods for `--method` help, from `ulpt.adapters.METHODS` so a new method shows up."""

HomeOption = Annotated[
    Path | None, typer.Option("--home", envvar="ULPT_HOME", help="Folder of the embedded catalog and store.")
]
CatalogUrlOption = Annotated[
    str | None,
    typer.Option(
        "--catalog-url", envvar="ULPT_CATALOG_URL", help="sqlite:///PATH or postgresql+psycopg://..."
    ),
]
StoreUrlOption = Annotated[
    str | None,
    typer.Option("--store-url", envvar="ULPT_STORE_URL", help="A folder, file://PATH or s3://BUCKET/PREFIX."),
]
TenantOption = Annotated[
    str, typer.Option("--tenant", envvar="ULPT_TENANT", help="Tenant whose adapters to use.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_S = 5200 * 604800
"""About a century: any longer span reaches before year 1 once subtracted from now (OverflowError)."""


def make_client(
    home: Path | None, catalog_url: str | None, store_url: str | None, tenant: str = "default"
) -> Client:
    return Client(home=home, catalog_url=catalog_url, store_url=store_url, tenant=tenant)


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `2d`, `1w`, or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise SpecError(f"invalid duration {text!r}: use e.g. 0, 90s, 30m, 1h, 2d or 1w")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > MAX_DURATION_S:
        raise SpecError(f"duration {text!r} is too long: at most {MAX_DURATION_S // _UNITS['w']}w")
    return timedelta(seconds=seconds)


def parse_time(text: str) -> datetime:
    """An ISO date/time (UTC unless it says otherwise) or a duration meaning that long ago (`2d`)."""
    if _DURATION.fullmatch(text.strip()):
        return datetime.now(timezone.utc) - parse_duration(text)  # bounded: cannot reach before year 1
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SpecError(
            f"invalid time {text!r}: use an ISO date like 2025-01-31 or a duration like 2d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
