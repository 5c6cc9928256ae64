"""What ``mmjepa train`` and ``mmjepa eval`` do with their parsed arguments (see ``mmjepa_cli``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

from .engine import load_recipe, train
from .eval.probe import probe_dataset
from .eval.spans import run_spans
from .models import MMJepaModel


def run_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.print:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return 0
    result = train(recipe)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result.already_finished:
        print(f"already finished: {result.output_dir} holds a finished run of {result.steps} steps "
              f"(checkpoint {result.checkpoint}, export {result.export_dir}); raise train.max_steps to train "
              "longer, or use another train.output_dir (or train.resume=never) to start over")
        return 0
    last = next((h for h in reversed(result.history) if "loss" in h), {})
    loss = f"final loss {last['loss']:.4f}" if "loss" in last else "no loss logged"
    print(f"trained {result.steps} steps, {result.samples_seen} samples, {result.train_samples_per_s:.1f} samples/s, "
          f"{loss}; {result.skipped_samples} bad samples skipped; checkpoint {result.checkpoint}, "
          f"export {result.export_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
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
