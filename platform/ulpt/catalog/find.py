"""`find`: adapter search with filters, a sort order and keyset (cursor) pagination.

Tags filter through `adapter_tags` and metrics through `adapter_metrics` (indexed by tenant, name,
value), so "tenant + tag, best eval_accuracy first, 50 at a time" walks an index instead of sorting.
A cursor encodes the last row's sort key and a hash of the filters: pages stay stable while rows are
added, and a cursor reused with different filters is refused instead of silently skipping rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import operator
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.orm import Session, aliased

from ulpt.catalog.models import ADAPTER_STATUSES, AdapterMetricRow, AdapterRow, AdapterTagRow
from ulpt.catalog.names import check_metric_name, check_tenant
from ulpt.errors import SpecError

MAX_LIMIT = 1000
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "=": operator.eq,
}
_THRESHOLD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_./-]*)\s*(>=|<=|==|=|>|<)\s*(\S+)\s*")
_COLUMNS = {"created_at": AdapterRow.created_at, "name": AdapterRow.name, "version": AdapterRow.version}


@dataclass(frozen=True)
class Threshold:
    """`metric op value`, e.g. eval_accuracy >= 0.8; adapters without the metric never match."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_thresholds(
    metrics: Mapping[str, Any] | Iterable[str | Threshold] | None,
) -> tuple[Threshold, ...]:
    """Accepts {"eval_accuracy": (">=", 0.8)}, {"eval_accuracy": 0.8} (means >=) or ["eval_accuracy>=0.8"]."""
    if not metrics:
        return ()
    out: list[Threshold] = []
    if isinstance(metrics, Mapping):
        for name, spec in metrics.items():
            op, value = (
                (spec[0], spec[1]) if isinstance(spec, (tuple, list)) and len(spec) == 2 else (">=", spec)
            )
            out.append(_threshold(name, op, value))
    else:
        for item in metrics:
            if isinstance(item, Threshold):
                out.append(item)
                continue
            match = _THRESHOLD.fullmatch(item) if isinstance(item, str) else None
            if match is None:
                raise SpecError(f"invalid metric filter {item!r}: expected NAME>=VALUE (also >, <=, <, ==)")
            out.append(_threshold(match.group(1), match.group(2), match.group(3)))
    return tuple(out)


def _threshold(name: str, op: Any, value: Any) -> Threshold:
    check_metric_name(name)
    if op not in _OPS:
        raise SpecError(f"invalid operator {op!r} for metric {name}: use one of >=, >, <=, <, ==")
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):  # NaN compares false with everything: the filter would match nothing
        raise SpecError(f"metric filter {name}{op}{value!r} needs a finite number")
    return Threshold(name, "==" if op == "=" else op, number)


@dataclass(frozen=True)
class AdapterQuery:
    """What `find` looks for; every filter is optional except the tenant (the caller's identity)."""

    tenant: str
    owner: str | None = None
    """Only adapters of this tenant; another tenant's adapters only where they are public."""
    name: str | None = None
    base_model: str | None = None
    method: str | None = None
    rank: int | None = None
    n_tokens: int | None = None
    tags: Mapping[str, str | None] = field(default_factory=dict)
    """All-of: key -> required value, or None for "has the tag, any value"."""
    status: str | None = "ready"
    """ready (default), deleted (tombstones), or None for both."""
    created_after: datetime | None = None
    created_before: datetime | None = None
    metrics: tuple[Threshold, ...] = ()
    job_id: uuid.UUID | None = None
    include_public: bool = False
    """Also list other tenants' public adapters."""
    order_by: str = "-created_at"
    """created_at, name, version or metrics.NAME; a leading '-' sorts descending."""
    limit: int = 50
    cursor: str | None = None

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        if self.owner is not None:
            check_tenant(self.owner)
        if self.status is not None and self.status not in ADAPTER_STATUSES:
            raise SpecError(
                f"status must be one of {', '.join(ADAPTER_STATUSES)} (or None for all), got {self.status!r}"
            )
        if (
            isinstance(self.limit, bool)
            or not isinstance(self.limit, int)
            or not 1 <= self.limit <= MAX_LIMIT
        ):
            raise SpecError(f"limit must be an integer in [1, {MAX_LIMIT}], got {self.limit!r}")
        _sort_key(self.order_by)
        for stamp in (self.created_after, self.created_before):
            if stamp is not None and stamp.tzinfo is None:
                raise SpecError("created_after / created_before must be timezone-aware datetimes")

    def filter_hash(self) -> str:
        """Identifies the result set a cursor belongs to (everything but limit and cursor)."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("limit", "cursor")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sort_key(order_by: str) -> tuple[str | None, str | None, bool]:
    """(column name or None, metric name or None, descending)."""
    descending = order_by.startswith("-")
    key = order_by.lstrip("-")
    if key in _COLUMNS:
        return key, None, descending
    if key.startswith("metrics."):
        return None, check_metric_name(key[len("metrics.") :]), descending
    raise SpecError(
        f"cannot sort by {order_by!r}: use created_at, name, version or metrics.NAME (prefix - to reverse)"
    )


def find_adapters(session: Session, query: AdapterQuery) -> tuple[list[AdapterRow], str | None]:
    """One page of adapters and the cursor of the next page (None on the last page)."""
    stmt, _, _ = _statement(query)
    rows = list(session.execute(stmt.limit(query.limit + 1)))
    page = [row[0] for row in rows[: query.limit]]
    if len(rows) <= query.limit:
        return page, None
    last_value, last = rows[query.limit - 1][1], page[-1]
    return page, _encode_cursor(query, last_value, last.id)


def _statement(query: AdapterQuery) -> tuple[Select[Any], Any, Any]:
    """(statement, sort column, tie-break column); written so PostgreSQL's planner estimates row counts well.

    Tag filters are EXISTS probes on adapter_tags' primary key, without a tenant condition: their
    selectivity is then estimated from global statistics (right, since tags are spread like adapters),
    where a tenant-restricted subquery made the planner assume 10x fewer matches and sort everything
    instead of walking the sort index and stopping at the page size. For the same reason the tenant
    is tested once: on the metric join when there is one (metric rows carry their adapter's tenant).
    """
    column, metric, descending = _sort_key(query.order_by)
    joins: dict[str, Any] = {}
    conditions: list[ColumnElement[bool]] = []
    for threshold in query.metrics:
        if threshold.metric not in joins:
            joins[threshold.metric] = aliased(AdapterMetricRow)
        conditions.append(_OPS[threshold.op](joins[threshold.metric].value, threshold.value))
    if metric is not None and metric not in joins:
        joins[metric] = aliased(AdapterMetricRow)
    scope = query.owner or query.tenant
    everyone = query.include_public and query.owner is None
    if everyone:
        conditions.append(or_(AdapterRow.tenant == query.tenant, AdapterRow.public.is_(True)))
    elif not joins:
        conditions.append(AdapterRow.tenant == scope)
    if scope != query.tenant:  # another tenant's catalog shows only what it made public
        conditions.append(AdapterRow.public.is_(True))
    for attr in ("name", "base_model", "method", "rank", "n_tokens", "job_id", "status"):
        value = getattr(query, attr)
        if value is not None:
            conditions.append(getattr(AdapterRow, attr) == value)
    if query.created_after is not None:
        conditions.append(AdapterRow.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(AdapterRow.created_at < query.created_before)
    for key, value in sorted(query.tags.items()):
        tag = exists().where(AdapterTagRow.adapter_id == AdapterRow.id, AdapterTagRow.key == key)
        conditions.append(tag if value is None else tag.where(AdapterTagRow.value == value))

    if metric is not None:
        sort_col, tie_col = joins[metric].value, joins[metric].adapter_id  # the metric index's own order
    else:
        sort_col, tie_col = _COLUMNS[column], AdapterRow.id  # type: ignore[index]
    stmt = select(AdapterRow, sort_col)
    for name, table in joins.items():
        on = [table.adapter_id == AdapterRow.id, table.name == name]
        if not everyone:
            on.append(table.tenant == scope)
        stmt = stmt.join(table, and_(*on))
    if query.cursor is not None:
        value, last_id = _decode_cursor(query)
        after = operator.lt if descending else operator.gt
        conditions.append(or_(after(sort_col, value), and_(sort_col == value, after(tie_col, last_id))))
    order = (sort_col.desc(), tie_col.desc()) if descending else (sort_col.asc(), tie_col.asc())
    return stmt.where(*conditions).order_by(*order), sort_col, tie_col


def _encode_cursor(query: AdapterQuery, value: Any, last_id: uuid.UUID) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    payload = {"o": query.order_by, "h": query.filter_hash(), "v": value, "i": str(last_id)}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(query: AdapterQuery) -> tuple[Any, uuid.UUID]:
    text = query.cursor or ""
    try:
        payload = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        value, last_id = payload["v"], uuid.UUID(payload["i"])
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"])
        order, filters = payload["o"], payload["h"]
        if not _fits_sort_column(value, query.order_by):
            raise ValueError("the cursor's value is not of its sort column's type")
    except (ValueError, KeyError, TypeError):
        raise SpecError("invalid cursor: pass the next_cursor value of a previous page unchanged") from None
    if order != query.order_by or filters != query.filter_hash():
        raise SpecError(
            "this cursor belongs to a different query (filters or order changed): start from the first page"
        )
    return value, last_id


def _fits_sort_column(value: Any, order_by: str) -> bool:
    """Whether a cursor's value can be compared with its sort column: a tampered one (a list, a naive
    date, a string for a number) must be a 400, not a database error at the comparison."""
    column, _, _ = _sort_key(order_by)
    if column == "created_at":
        return isinstance(value, datetime) and value.tzinfo is not None
    if column == "name":
        return isinstance(value, str)
    if column == "version":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def query_from(tenant: str, **filters: Any) -> AdapterQuery:
    """An AdapterQuery from loose arguments (tags as a mapping or list, metrics in any accepted form)."""
    tags = filters.pop("tags", None)
    metrics = filters.pop("metrics", None)
    return AdapterQuery(tenant=tenant, tags=tag_filter(tags), metrics=parse_thresholds(metrics), **filters)


def tag_filter(tags: Mapping[str, Any] | Sequence[str] | None) -> dict[str, str | None]:
    """{"k": "v"} or ["k=v", "bare"]: "bare" (or {"k": None}) only requires the tag to be present."""
    if not tags:
        return {}
    if isinstance(tags, str):
        tags = [tags]
    if isinstance(tags, Mapping):
        return {str(k): (None if v is None else str(v)) for k, v in tags.items()}
    out: dict[str, str | None] = {}
    for tag in tags:
        key, sep, value = str(tag).partition("=")
        out[key] = value if sep else None
    return out
