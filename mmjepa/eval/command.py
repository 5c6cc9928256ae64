"""``mmjepa eval probe|spans`` with the arguments ``mmjepa_cli`` parsed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import MMJepaModel
from .probe import probe_dataset
from .spans import run_spans


def run(args: argparse.Namespace) -> int:
    if args.task == "spans":
        return run_spans(args)
    model = MMJepaModel.from_pretrained(args.model)
    modality = args.modality
    if modality is None:
        if len(model.modality_names) != 1:
            raise ValueError(f"the model has modalities {model.modality_names}: pick one with --modality")
        modality = model.modality_names[0]
    acc = probe_dataset(model, args.data, modality, progress=True)
    print(f"linear probe accuracy on {args.data} ({modality}): {acc:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": "probe", "data": args.data, "modality": modality,
                                               "accuracy": acc}, indent=2))
    return 0
