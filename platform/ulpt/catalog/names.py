"""Names and references: what a user may call a tenant, an adapter, an alias, a tag or a metric.

Names are case-sensitive, start with a letter or digit, and use only letters, digits, `.`, `_` and `-`
(at most 128 characters; tenants 64). That keeps them safe in URLs, shells, file names and the
reference syntax `[TENANT/]NAME[:VERSION]`, where VERSION is a positive integer or `latest`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ulpt.errors import InvalidNameError, SpecError, shown

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)
_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}")
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,127}")
_REF = re.compile(
    rf"(?:(?P<tenant>{TENANT_PATTERN})/)?(?P<name>{NAME_PATTERN})(?::(?P<version>[0-9]+|latest))?"
)
MAX_TAG_VALUE = 256
MAX_VERSION = 2**31 - 1


def check_name(name: object, what: str = "adapter name") -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidNameError(
            f"invalid {what} {shown(name)}: use 1-128 letters, digits, '.', '_', '-', not starting with . _ -"
        )
    return name


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or _TENANT.fullmatch(tenant) is None:
        raise InvalidNameError(
            f"invalid tenant {shown(tenant)}: "
            "use 1-64 letters, digits, '.', '_', '-', not starting with . _ -"
        )
    return tenant


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise SpecError(f"version must be an integer in [1, {MAX_VERSION}], got {shown(version)}")
    return version


@dataclass(frozen=True)
class Ref:
    """A parsed `[TENANT/]NAME[:VERSION]`; version None means the latest (or an alias)."""

    name: str
    version: int | None = None
    tenant: str | None = None

    def __str__(self) -> str:
        text = self.name if self.version is None else f"{self.name}:{self.version}"
        return f"{self.tenant}/{text}" if self.tenant else text


def parse_ref(ref: object) -> Ref:
    if not isinstance(ref, str):
        raise InvalidNameError(
            f"adapter reference must be a string like name, name:3 or an alias, got {shown(ref)}"
        )
    match = _REF.fullmatch(ref.strip())
    if match is None:
        raise InvalidNameError(
            f"invalid adapter reference {shown(ref)}: expected NAME, NAME:VERSION or an alias (or TENANT/...)"
        )
    version = match.group("version")
    parsed = Ref(
        match.group("name"), None if version in (None, "latest") else int(version), match.group("tenant")
    )
    if parsed.version is not None:
        check_version(parsed.version)
    return parsed


def normalize_tags(tags: Mapping[str, Any] | Iterable[str] | None) -> dict[str, str]:
    """Tags as {key: value}: a mapping is taken as is, bare strings become {tag: ''}, 'k=v' becomes {k: v}."""
    if tags is None:
        return {}
    if isinstance(tags, str):
        raise SpecError(f"tags must be a mapping or a list of strings, got the string {shown(tags)}")
    if isinstance(tags, Mapping):
        items = [(k, v) for k, v in tags.items()]
    else:
        items = []
        for tag in tags:
            if not isinstance(tag, str):
                raise SpecError(f"tags must be strings, got {shown(tag)}")
            key, sep, value = tag.partition("=")
            items.append((key, value if sep else ""))
    out: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or _TAG_KEY.fullmatch(key) is None:
            raise SpecError(
                f"invalid tag key {shown(key)}: use 1-128 letters, digits, '.', '_', '/', ':' or '-'"
            )
        if value is None:
            value = ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SpecError(f"tag {key} must have a string value, got {shown(value)}")
        value = str(value)
        if len(value) > MAX_TAG_VALUE or any(c in value for c in "\r\n\0"):
            raise SpecError(f"tag {key} value must be one line of at most {MAX_TAG_VALUE} characters")
        out[key] = value
    return out


def check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics must be JSON values under valid names; numbers must be finite (JSON has no NaN)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise SpecError(f"metrics must be a mapping of name -> value, got {type(metrics).__name__}")
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        check_metric_name(name)
        out[name] = _json_value(value, f"metric {name}")
    return out


def check_metric_name(name: object) -> str:
    if not isinstance(name, str) or _METRIC.fullmatch(name) is None:
        raise SpecError(f"invalid metric name {shown(name)}: use letters, digits, '_', '.', '/' or '-'")
    return name


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries `find` can filter and sort on (numbers, not booleans)."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def check_json(value: Any, what: str) -> Any:
    return _json_value(value, what)


def _json_value(value: Any, what: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{what} must be a finite number, got {value}")
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_value(value.item(), what)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v, what) for v in value]
    raise SpecError(f"{what} must be JSON (numbers, strings, lists, mappings), got {type(value).__name__}")


MAX_PRIORITY = 1_000_000


def check_priority(priority: object) -> int:
    """A job's priority within its tenant (higher is claimed first by a pool); one line otherwise."""
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_PRIORITY:
        raise SpecError(
            f"job priority must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}, got {priority!r}"
        )
    return priority
