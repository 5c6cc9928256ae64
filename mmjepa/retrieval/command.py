"""``mmjepa embed`` and ``mmjepa search`` with the arguments ``mmjepa_cli`` parsed."""

from __future__ import annotations

import argparse
import json

from ..models import MMJepaModel
from .index import EmbeddingIndex
from ..modalities import get_modality
from .items import read_items, string_items, string_modality


def _backend_options(args: argparse.Namespace) -> dict[str, int]:
    names = ("m", "ef_search", "nlist", "nprobe")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run_embed(args: argparse.Namespace) -> int:
    if (args.input is None) == (not args.text):
        raise ValueError("give either INPUT (a folder, shards, a .csv/.jsonl manifest, builtin:NAME) or --text STRING ...")
    model = MMJepaModel.from_pretrained(args.model)
    if args.text:
        items = string_items(args.text, string_modality(model))
    else:
        items = read_items(args.input, args.kind, args.text_lines, args.text_columns.split(","))
    modalities = [m for m in args.modalities.split(",") if m] if args.modalities else None
    index = EmbeddingIndex.build(model, items, modalities, args.batch_size, use_target=not args.online,
                                 backend=args.backend, backend_options=_backend_options(args),
                                 progress=not args.quiet, model_ref=args.model)
    index.save(args.output)
    stats = index.stats
    counts = ", ".join(f"{len(k)} {m}" for m, k in index.keys.items())
    dropped = "".join(f", {n} lost their {m}" for m, n in stats["dropped"].items())
    print(f"embedded {counts} from {stats['items']} items (skipped {stats['skipped']}{dropped}) into {args.output} "
          f"[{index.backend}]")
    return 0


def run_search(args: argparse.Namespace) -> int:
    index = EmbeddingIndex.load(args.index, **_backend_options(args))
    ref = args.model or index.model_ref
    if ref is None:
        raise ValueError("the gallery does not name its model: give --model")
    index.attach(MMJepaModel.from_pretrained(ref))
    # the query options are named after the modalities (--text, --image, --audio)
    given = {get_modality(m).processor_arg: getattr(args, m) for m in index.model.modality_names
             if getattr(args, m, None)}
    if not given:
        raise ValueError("give a query: --text STRING, --image PATH or --audio PATH (of the model's modalities "
                         f"{index.model.modality_names})")
    results = index.search(target=args.target, k=args.k, mode=args.mode, **given)
    query = next(iter(given.values()))
    if args.json:
        print(json.dumps([{"query": q, "results": [{"key": k, "score": s} for k, s in r]}
                          for q, r in zip(query, results)], indent=2))
        return 0
    for q, r in zip(query, results):
        print(f"{q}:")
        for rank, (key, score) in enumerate(r, 1):
            print(f"  {rank:3d}  {score:+.4f}  {key}")
    return 0
