"""Errors a user can fix. The CLI prints their message as one line and exits non-zero.

Messages are made for people who may be hostile: a value they sent is quoted with `shown` (a bounded
`repr`, however large or deep the value), and every message leaving a service passes `first_line`,
which keeps one line, at most `MAX_MESSAGE_CHARS`, with any `user:password@` of a URL masked.
"""

import re
import reprlib
from typing import Final
from urllib.parse import urlsplit, urlunsplit

MAX_MESSAGE_CHARS: Final = 500
"""Longest message an error carries out of a service (a spec error names a field and a short value)."""
_CREDENTIALS_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#]*@")
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 80, 80
_SHOWN.maxdict = _SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxset = _SHOWN.maxfrozenset = 4


def redact_url(url: str) -> str:
    """`url` fit for a message: a user:password@ part (endpoint URLs may carry one) becomes ***@."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class UlptError(Exception):
    """An error caused by input, configuration or stored data, not by a bug in ulpt."""


class SpecError(UlptError, ValueError):
    """An invalid specification (adapter, fit, job); the message names the field."""


class QuotaError(UlptError):
    """A tenant's quota refuses a submission. `rate`: it would pass once the tenant's queue drains
    (HTTP 429); otherwise the job itself is too big for the quota (HTTP 413)."""

    def __init__(self, message: str, *, rate: bool) -> None:
        super().__init__(message)
        self.rate = rate


class AdapterFormatError(UlptError):
    """An adapter file or blob that is malformed or does not match its own config."""


class FingerprintMismatchError(AdapterFormatError):
    """The regenerated projection differs from the one the adapter was trained with."""


class ModelNotFoundError(UlptError):
    """A base model name or path that cannot be resolved."""


class DataError(UlptError):
    """Training or evaluation data that cannot be used."""


class InvalidNameError(SpecError):
    """A tenant, adapter or alias name outside the allowed pattern (see `ulpt.catalog.names`)."""


class CatalogError(UlptError):
    """The catalog database cannot be reached or refused an operation."""


class NotFoundError(CatalogError, LookupError):
    """No adapter, alias, job or version answers to the given reference (in the caller's tenant)."""


class ConflictError(CatalogError):
    """The change would break a uniqueness rule (name+version, alias vs name) or a live reference."""


class MigrationRequiredError(CatalogError):
    """The catalog's schema revision is not the one this ulpt needs: run `ulpt db upgrade`."""


class StoreError(UlptError):
    """The object store cannot be reached, refuses the credentials, or failed an operation."""


class BlobNotFoundError(StoreError):
    """A blob the catalog refers to is missing from the object store."""


class BlobIntegrityError(StoreError):
    """A blob's bytes do not hash to the SHA-256 its key and the catalog record promise."""


def shown(value: object) -> str:
    """`repr(value)` for a message, at most a few hundred characters whatever `value` holds: a value
    from a request may be a list of a million items, or one that YAML aliases make look like it."""
    return _SHOWN.repr(value)


def redact_urls(text: str) -> str:
    """`text` with the `user:password@` part of every URL in it masked as `***@`."""
    return _CREDENTIALS_IN_URL.sub(r"\1***@", text)


def first_line(value: object) -> str:
    """The first non-blank line of `value`'s text, stripped (its type's name if it has none), at most
    `MAX_MESSAGE_CHARS` long, credentials in URLs masked: what a message may carry out of a service.

    Library errors (a driver, botocore, Ray) often span many lines; ulpt's messages stay one line.
    """
    text = str(value)
    if len(text) > 4 * MAX_MESSAGE_CHARS:
        text = text[: 4 * MAX_MESSAGE_CHARS]  # the first line of a huge text is in its head
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(value).__name__)
    line = redact_urls(line)
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"
