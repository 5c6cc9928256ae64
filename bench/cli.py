"""``mmjepa bench speed|data|retrieval|quality|faults|scaling|tta``: run a benchmark module with the parsed arguments."""

from __future__ import annotations

import argparse
import importlib


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(f"mmjepa.bench.{args.bench}").run(args) or 0)
