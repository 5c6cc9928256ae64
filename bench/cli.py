"""``mmjepa bench speed|data|quality ...``: dispatch to the benchmark modules in ``bench/``."""

from __future__ import annotations

import importlib
import sys

BENCHES = {"speed": "mmjepa.bench.speed", "data": "mmjepa.bench.data", "quality": "mmjepa.bench.quality"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: mmjepa bench {{{'|'.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHES[argv[0]]).main(argv[1:]) or 0)
