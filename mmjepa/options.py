"""Options dataclasses from plain dicts (as configs store them), for plug-ins and objectives."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

_SCALARS = {int: "an int", float: "a number", str: "a string", bool: "true or false"}


def _scalar_types(hint: Any) -> tuple[type, ...] | None:
    """The scalar types an annotation allows (``float | None`` -> (float, NoneType)), or None when it
    allows anything else too (tuples, lists, dicts: checked by the dataclass itself)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if all(a in _SCALARS or a is type(None) for a in args):
        return args
    return None


def check_types(cls: type, opts: dict[str, Any], what: str) -> None:
    """TypeError naming the option whose value has the wrong scalar type (an int is a number; a bool
    is not an int)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # annotations that do not resolve: nothing to check
        return
    for name, value in opts.items():
        allowed = _scalar_types(hints.get(name))
        if allowed is None:
            continue
        ok = any(value is None if a is type(None) else
                 isinstance(value, bool) if a is bool else
                 isinstance(value, (int, float)) and not isinstance(value, bool) if a is float else
                 isinstance(value, a) and not isinstance(value, bool) if a is int else isinstance(value, a)
                 for a in allowed)
        if not ok:
            expected = " or ".join("null" if a is type(None) else _SCALARS[a] for a in allowed)
            raise TypeError(f"{what} option {name!r} must be {expected}, got {type(value).__name__} {value!r}")


def options_from_dict(cls: type, opts: dict[str, Any] | None, what: str) -> Any:
    """``cls(**opts)`` for an options dataclass, with unknown keys rejected by name (``what`` says
    whose options they are, e.g. "image modality")."""
    opts = dict(opts or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {known}")
    check_types(cls, opts, what)
    return cls(**opts)
