"""Data throughput: is training ever input-bound?

    mmjepa bench data --json bench-data.json
    mmjepa bench data --recipe recipes/image/digits_ijepa_cpu.yaml --batches 30 --steps 10

In one process, on the same machine and the same run:

1. ``input_samples_per_s``: the input pipeline alone (decode + per-modality processors + masks +
   collation, with the recipe's default DataLoader workers), batches drawn and dropped;
2. ``train_samples_per_s``: what the recipe's training step consumes (forward, backward, AdamW,
   EMA; the trainer's own ``train_step``) on batches prepared beforehand, so no input work is in it;
3. ``input_over_train`` = 1 / 2 (goal: >= 3).

By default the recipe's own source is measured (the digits recipe: in-memory real digits). Unless
``--no-tuxpaint``, the same model config also reads WebDataset shards built on the fly from the
Tux Paint clip-art in ``$MMJEPA_DATA_DIR`` (real PNGs of ~500 px: the PIL decode + resize path), reported under
``tuxpaint_shards``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmjepa.data import DataPipeline, DataStream
from mmjepa.datasets import shared_data_dir
from mmjepa.engine import Trainer, load_recipe
from mmjepa.shards import folder_samples, write_shards

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "image" / "digits_ijepa_cpu.yaml"


def measure_input(recipe, batches: int, repeats: int = 3, warmup: int = 3) -> dict:
    """Samples/s of the input pipeline alone (median over ``repeats`` windows of ``batches``)."""
    pipe = DataPipeline(recipe.data, recipe.model_config())
    stream = DataStream(pipe)
    for _ in range(warmup):  # workers started, buffers filled
        next(stream)
    rates = []
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        for _ in range(batches):
            n += len(next(stream)["__key__"])
        rates.append(n / (time.perf_counter() - t0))
    stream.close()
    return {"samples_per_s": statistics.median(rates), "windows": rates, "batches_per_window": batches,
            "batch_size": recipe.data.batch_size, "num_workers": recipe.data.num_workers,
            "skipped": stream.skipped}


def measure_train(recipe, steps: int, repeats: int = 3, warmup: int = 2) -> dict:
    """Samples/s of the recipe's training step on ready batches (median over ``repeats`` windows)."""
    trainer = Trainer(recipe)
    pipe = DataPipeline(recipe.data, recipe.model_config())
    stream = DataStream(pipe)
    accum = recipe.train.grad_accum
    batches = [next(stream) for _ in range(accum * (warmup + steps))]
    stream.close()
    per_step = recipe.data.batch_size * accum
    for i in range(warmup):
        trainer.train_step(batches[i * accum:(i + 1) * accum])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            trainer.train_step(batches[i * accum:(i + 1) * accum])
        rates.append(steps * per_step / (time.perf_counter() - t0))
    return {"samples_per_s": statistics.median(rates), "windows": rates, "steps_per_window": steps,
            "samples_per_step": per_step, "torch_threads": torch.get_num_threads()}


def tuxpaint_recipe(recipe, workdir: Path):
    """The same recipe reading shards built from the shared tuxpaint images (or None without data)."""
    data = shared_data_dir(required=False)
    if data is None or not (data / "tuxpaint").is_dir():
        return None
    out = workdir / "tuxpaint_shards"
    write_shards(folder_samples(data / "tuxpaint", text_lines="first"), out, max_count=100,
                 require=("image",), progress=False)
    raw = recipe.to_dict()
    raw["data"]["sources"] = [{"type": "shards", "urls": str(out)}]
    raw["train"]["output_dir"] = str(workdir / "run")
    return load_recipe(raw)


def measure(recipe_path: str | Path = DEFAULT_RECIPE, batches: int = 20, steps: int = 8, repeats: int = 3,
            tuxpaint: bool = True, overrides: list[str] | None = None) -> dict:
    """Input pipeline and training step of a recipe, in the same run (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(recipe_path, [*(overrides or []), f"train.output_dir={tmp}/run", "train.tracker=none",
                                           "train.progress=false"])
        inp = measure_input(recipe, batches, repeats)
        trn = measure_train(recipe, steps, repeats)
        result = {
            "input_samples_per_s": inp["samples_per_s"],
            "train_samples_per_s": trn["samples_per_s"],
            "input_over_train": inp["samples_per_s"] / trn["samples_per_s"],
            "goal_input_over_train": 3.0,
            "recipe": str(recipe_path),
            "input": inp,
            "train": trn,
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu_count": os.cpu_count(), "platform": platform.platform()},
        }
        if tuxpaint:
            tux = tuxpaint_recipe(recipe, Path(tmp))
            if tux is not None:
                t_inp = measure_input(tux, max(4, batches // 2), repeats)
                result["tuxpaint_shards"] = {"input_samples_per_s": t_inp["samples_per_s"],
                                             "input_over_train": t_inp["samples_per_s"] / trn["samples_per_s"],
                                             "input": t_inp}
    return result


def run(args: argparse.Namespace) -> int:
    """``mmjepa bench data`` with parsed arguments (see ``mmjepa_cli``)."""
    res = measure(args.recipe or str(DEFAULT_RECIPE), args.batches, args.steps, args.repeats, not args.no_tuxpaint,
                  args.overrides)
    print(f"input pipeline : {res['input_samples_per_s']:8.1f} samples/s "
          f"({res['input']['num_workers']} workers, batch {res['input']['batch_size']})")
    print(f"training step  : {res['train_samples_per_s']:8.1f} samples/s ({res['train']['torch_threads']} threads)")
    print(f"input / train  : {res['input_over_train']:8.2f}  (goal >= 3)")
    if "tuxpaint_shards" in res:
        t = res["tuxpaint_shards"]
        print(f"tuxpaint shards: {t['input_samples_per_s']:8.1f} samples/s, input / train {t['input_over_train']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0
