"""How a problem is said: ``"<path.in.doc>: <what was expected>"``.

Every problem Podium reports about an architecture file has this shape, whether it comes from
the pydantic models (translated here from pydantic's error details, with a "did you mean" for a
typo'd key) or from the cross-checks. Paths and value descriptions are built here so that both
sources word them the same way.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

__all__ = ["Loc", "describe", "format_path", "translate"]

Loc = tuple[str | int, ...]
"""A path in the document: mapping keys and list indexes, outermost first."""

_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def format_path(loc: Iterable[str | int]) -> str:
    """``("dataflows", "tracer", "resources", "topics", 0, "name")`` → ``dataflows.tracer.resources.topics[0].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "(root)"


def describe(value: Any) -> str:
    """What a value is, for "expected X, got Y": ``an integer (3)``, ``a list``, ``nothing (null)``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the type that holds the keys."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _fields_by_key(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields under the key the file uses (its alias, e.g. a table's ``schema``)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class a document path points into from ``root`` (to list its valid keys)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = _fields_by_key(tp).get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
}


def translate(err: ErrorDetails, root: type[BaseModel]) -> str:
    """One pydantic error, validating a ``root`` model, as a problem line."""
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        valid = sorted(_fields_by_key(model)) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        if close:
            return f"{format_path(loc)}: unknown key; did you mean {close[0]!r}?"
        hint = f" (expected one of: {', '.join(valid)})" if valid else ""
        return f"{format_path(loc)}: unknown key{hint}"
    if kind == "missing":
        return f"{format_path(loc)}: required field is missing"
    if kind == "value_error":
        return f"{format_path(loc)}: {ctx.get('error', err['msg'])}"
    if kind == "literal_error":
        return f"{format_path(loc)}: expected one of {ctx.get('expected')}, got {describe(value)}"
    expected = _EXPECTED.get(kind)
    if expected is not None:
        return f"{format_path(loc)}: expected {expected}, got {describe(value)}"
    msg = err["msg"]
    return f"{format_path(loc)}: {msg[:1].lower()}{msg[1:]}"
