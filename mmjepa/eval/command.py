"""``mmjepa eval probe|retrieval|zeroshot|spans`` with the arguments ``mmjepa_cli`` parsed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import MMJepaModel
from ..retrieval.items import read_items
from .crossmodal import evaluate_retrieval, zeroshot_classify
from .probe import probe_dataset
from .spans import run_spans


def _write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2))


def _class_names(spec: str) -> list[str]:
    """A comma list, or a file with one class name per line."""
    if Path(spec).is_file():
        return [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [c.strip() for c in spec.split(",") if c.strip()]


def run_retrieval(args: argparse.Namespace) -> int:
    model = MMJepaModel.from_pretrained(args.model)
    modalities = [m for m in args.modalities.split(",") if m] if args.modalities else None
    ks = [int(k) for k in args.ks.split(",") if k]
    items = read_items(args.data, args.kind, args.text_lines, args.text_columns.split(","))
    res = evaluate_retrieval(model, items, modalities, args.positives, ks,
                             args.batch_size, predicted=not args.no_predicted, progress=not args.quiet)
    print(f"retrieval on {args.data} ({res['positives']} positives; {res['counts']})")
    print(f"  {'direction':<28}" + "".join(f"{'R@' + str(k):>8}" for k in ks) + f"{'mean rank':>11}{'median':>8}")
    for name, r in res.items():
        if isinstance(r, dict) and "mean_rank" in r:
            print(f"  {name:<28}" + "".join(f"{r[f'r{k}']:8.3f}" for k in ks)
                  + f"{r['mean_rank']:11.1f}{r['median_rank']:8.1f}")
    _write_json(args.json, {"task": "retrieval", "data": args.data, "model": args.model, **res})
    return 0


def run_zeroshot(args: argparse.Namespace) -> int:
    model = MMJepaModel.from_pretrained(args.model)
    names = _class_names(args.classes)
    items = read_items(args.data, args.kind, args.text_lines, args.text_columns.split(","))
    res = zeroshot_classify(model, items, args.modality, names,
                            args.templates, args.batch_size, predicted=not args.no_predicted, progress=not args.quiet)
    more = f", by predicted text embedding {res['accuracy_predicted']:.4f}" if "accuracy_predicted" in res else ""
    print(f"zero-shot accuracy on {args.data} ({args.modality}, {res['items']} items, {len(names)} classes, "
          f"{len(args.templates)} templates): {res['accuracy']:.4f}{more} (majority class {res['chance']:.4f})")
    _write_json(args.json, {"task": "zeroshot", "data": args.data, "model": args.model, **res})
    return 0


def run_probe(args: argparse.Namespace) -> int:
    model = MMJepaModel.from_pretrained(args.model)
    modality = args.modality
    if modality is None:
        if len(model.modality_names) != 1:
            raise ValueError(f"the model has modalities {model.modality_names}: pick one with --modality")
        modality = model.modality_names[0]
    acc = probe_dataset(model, args.data, modality, progress=True)
    print(f"linear probe accuracy on {args.data} ({modality}): {acc:.4f}")
    _write_json(args.json, {"task": "probe", "data": args.data, "modality": modality, "accuracy": acc})
    return 0


TASKS = {"probe": run_probe, "retrieval": run_retrieval, "zeroshot": run_zeroshot, "spans": run_spans}


def run(args: argparse.Namespace) -> int:
    return TASKS[args.task](args)
