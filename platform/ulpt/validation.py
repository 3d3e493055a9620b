"""`SpecModel`: the base of every spec (adapter, training, sampling, job, serving), and the one place that
turns pydantic's structured errors into the project's one-line `SpecError` naming the field path."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from ulpt.errors import SpecError, shown

SPEC_CONFIG = ConfigDict(
    frozen=True, extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
)
"""Frozen (specs are hashable values that travel between processes), no unknown keys (a typo is an
error, not a silently ignored setting), strict types (`lr: true` or `rank: "2"` is a mistake, not 1.0
or 2), finite floats (a NaN or infinite timeout reads as "never")."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]
"""A name or path: an empty or all-space one is always a mistake."""

_PHRASES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a finite number",
    "float_parsing": "must be a finite number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


_VALIDATING: ContextVar[bool] = ContextVar("ulpt_spec_validating", default=False)


class SpecModel(BaseModel):
    """A validated, immutable spec whose shape is its YAML/JSON shape: one `model_validate` in,
    one `model_dump` out. Invalid input raises `SpecError` from the constructor and `from_dict` alike."""

    model_config = SPEC_CONFIG

    def __init__(self, /, **data: Any) -> None:
        # pydantic builds nested specs through this __init__ too: only the outermost one turns the
        # ValidationError (whose loc then holds the whole path) into a SpecError.
        if _VALIDATING.get():
            super().__init__(**data)
            return
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError(describe(exc, type(self))) from None
        finally:
            _VALIDATING.reset(token)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "") -> typing.Self:
        """Validate a parsed YAML/JSON mapping; errors are prefixed with `where` (e.g. `train`)."""
        token = _VALIDATING.set(True)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(describe(exc, cls, where)) from None
        finally:
            _VALIDATING.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON form `from_dict` reads back."""
        return self.model_dump(mode="json")


def describe(exc: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """The first error of `exc` as one line: `train.lr must be a finite number, got True`."""
    error = exc.errors(include_url=False)[0]
    # union members add their tag to the path ("constrained-float", "rate-list"): never a field name
    fields = tuple(p for p in error["loc"] if isinstance(p, int) or str(p).isidentifier())
    loc = ((where,) if where else ()) + fields
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    kind = error["type"]
    if kind == "value_error":
        text = str(error["ctx"]["error"])
        field = str(loc[-1]) if loc else ""
        if field and text.startswith(field + " "):  # a check that already names its own field
            return f"{path}{text[len(field) :]}"
        return f"{path}: {text}" if path else text
    if kind == "missing":
        return f"{path} is required"
    if kind == "extra_forbidden":
        known = _known_fields(model, tuple(error["loc"])[:-1])
        return f"{path} is not a known field; known: {', '.join(known)}"
    if kind == "literal_error":
        phrase = f"must be one of {error['ctx']['expected']}"
    else:
        phrase = _PHRASES.get(kind) or error["msg"].replace("Input should be", "must be", 1)
    value = error.get("input")
    got = f", got {shown(value)}" if not isinstance(value, (Mapping, BaseModel)) else ""
    return f"{path} {phrase}{got}" if path else f"{phrase}{got}"


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The fields of the (nested) model that `loc` points into, for an unknown-field message."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as `AdapterSpec`, `tuple[FitSpec, ...]` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (tuple, list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
