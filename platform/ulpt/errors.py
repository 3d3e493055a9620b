"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""

from urllib.parse import urlsplit, urlunsplit


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


def first_line(value: object) -> str:
    """The first non-blank line of `value`'s text, stripped (its type's name if it has none).

    Library errors (a driver, botocore, Ray) often span many lines; ulpt's messages stay one line.
    """
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return lines[0] if lines else type(value).__name__
