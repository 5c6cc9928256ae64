"""Folders that may also be Hugging Face Hub ids (``name`` or ``org/name``): tell them apart, and
say "no such folder" for a local one that is missing (instead of the Hub's "Repo id must be ...")."""

from __future__ import annotations

from pathlib import Path


def looks_local(ref: str) -> bool:
    """True when ``ref`` can only be a local path, not a Hub id: it exists, is absolute or starts
    with ``.`` or ``~``, or has more than one ``/``."""
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1 or Path(ref).expanduser().exists()


def local_or_hub(ref: str, what: str) -> str:
    """``ref`` as given (a Hub id) or as an existing local folder; ValueError "``what``: no such
    folder" when it can only be a local path and is not there."""
    if not looks_local(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise ValueError(f"{what}: no such folder: {path}")
    return str(path)
