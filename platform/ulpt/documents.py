"""JSON and YAML from people who may be hostile (job specs over HTTP, uploaded rows), parsed with bounds.

Both parsers recurse once per level of nesting, so a body nested 100,000 deep would end as a
`RecursionError` (a 500) after seconds of work; YAML's anchors and aliases let 400 bytes stand for a
billion values, which any later walk of them (validation, an error message's `repr`) pays in full.
So the depth is measured before anything is built (JSON: one scan of its brackets; YAML: its event
stream, stopped at the first level too many), and YAML's aliases count for the nodes they expand to,
refused past `MAX_NODES`. JSON's non-standard `NaN` and `Infinity` are refused: rows and specs hold
finite numbers only. Errors are `SpecError`s of one line.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Final

import yaml

from ulpt.errors import SpecError

MAX_DEPTH: Final = 64
"""Most levels of nested lists and mappings a document may have (a job spec uses 4)."""
MAX_NODES: Final = 100_000
"""Most values a YAML document may expand to, aliases counted as the values they repeat."""

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def json_depth(data: bytes) -> int:
    """How deeply `data`'s lists and objects nest (brackets inside strings do not count), without
    parsing it: the scan runs at C speed and holds one byte per bracket."""
    steps = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data)).translate(_STEP)
    return max(itertools.accumulate(memoryview(steps).cast("b")), default=0)


def _no_constant(name: str) -> Any:
    raise SpecError(f"{name} is not a number JSON allows: send finite numbers")


def load_json(data: bytes | str, what: str = "the body", max_depth: int = MAX_DEPTH) -> Any:
    """The value of a JSON document nested at most `max_depth` deep, with finite numbers only."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth(raw) > max_depth:
        raise SpecError(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:
        if isinstance(exc, SpecError):
            raise SpecError(f"{what}: {exc}") from None
        raise SpecError(f"{what} is not valid JSON") from None


def load_yaml(text: str, what: str = "the document", max_depth: int = MAX_DEPTH) -> Any:
    """The value of a YAML document (plain data only: `safe_load`), refused before it is built when it
    nests deeper than `max_depth` or its aliases expand past `MAX_NODES` values."""
    try:
        _check_yaml_shape(text, what, max_depth)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SpecError(f"{what}:{where} invalid YAML: {problem}") from None


def _check_yaml_shape(text: str, what: str, max_depth: int) -> None:
    """One pass over the parser's events: the nesting depth, and the values each anchor stands for, so
    that an alias adds what it repeats (`a2: &a2 [*a1, *a1]` is 2 * size(a1) + 1 values, not 3)."""
    open_sizes: list[int] = []  # values so far in each open collection
    open_anchors: list[str | None] = []
    anchor_sizes: dict[str, int] = {}
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        size = 0
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_sizes) >= max_depth:
                raise SpecError(f"{what} nests deeper than {max_depth} levels")
            open_sizes.append(1)
            open_anchors.append(event.anchor)
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_sizes.pop(), open_anchors.pop()
            if anchor is not None:
                anchor_sizes[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
        elif isinstance(event, yaml.AliasEvent):
            size = anchor_sizes.get(event.anchor or "", 1)  # an unknown anchor fails in safe_load itself
        if open_sizes:
            open_sizes[-1] += size
            if open_sizes[-1] > MAX_NODES:
                raise SpecError(f"{what} expands to more than {MAX_NODES} values (through its aliases)")
        else:
            total += size
            if total > MAX_NODES:
                raise SpecError(f"{what} expands to more than {MAX_NODES} values (through its aliases)")
