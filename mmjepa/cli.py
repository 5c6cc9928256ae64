"""The ``mmjepa`` command line: ``mmjepa <command> [args]`` (also ``python -m mmjepa``).

Each command lives in its own module with a ``main(argv)`` function; this file only dispatches,
importing the module on use so that ``mmjepa --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "shards": ("mmjepa.shards", "build WebDataset shards from a folder / CSV / JSONL / HF dataset"),
    "train": ("mmjepa.train", "train from a recipe: mmjepa train RECIPE.yaml [key=value ...]"),
    "eval": ("mmjepa.evaluate", "evaluate a model: retrieval | probe | spans"),
    "embed": ("mmjepa.embed", "embed files into an array"),
    "tokenizer": ("mmjepa.tokenizer", "train a SentencePiece tokenizer"),
    "demo": ("mmjepa.demo", "the quickstart on the built-in small real dataset"),
    "bench": ("mmjepa.bench.cli", "benchmarks: speed | data | quality"),
}


def _usage() -> str:
    lines = ["usage: mmjepa <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`mmjepa <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mmjepa import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mmjepa: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        if err.name == COMMANDS[name][0]:
            print(f"mmjepa: the {name!r} command is not available in this version", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
