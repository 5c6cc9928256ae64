"""``mmjepa train RECIPE [KEY=VALUE ...]`` with the arguments ``mmjepa_cli`` parsed."""

from __future__ import annotations

import argparse
import os

import yaml

from .recipe import load_recipe
from .trainer import train


def run(args: argparse.Namespace) -> int:
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
          f"{loss}; {result.skipped_samples} bad samples skipped; {result.skipped_steps} non-finite steps skipped; "
          f"checkpoint {result.checkpoint}, "
          f"export {result.export_dir}")
    return 0
