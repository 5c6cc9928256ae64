"""Options dataclasses from plain dicts (as configs store them), for plug-ins and objectives."""

from __future__ import annotations

import dataclasses
from typing import Any


def options_from_dict(cls: type, opts: dict[str, Any] | None, what: str) -> Any:
    """``cls(**opts)`` for an options dataclass, with unknown keys rejected by name (``what`` says
    whose options they are, e.g. "image modality")."""
    opts = dict(opts or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {known}")
    return cls(**opts)
