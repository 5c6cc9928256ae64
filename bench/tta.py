"""``mmjepa bench tta``: training seconds to a fixed frozen-probe accuracy (time to accuracy).

    mmjepa bench tta --json runs/tta/tta.json
    mmjepa bench tta --datasets digits --options reference,corners --budget 60 --json /tmp/tta.json

For each dataset (the sklearn digit images with ``recipes/image/digits_ijepa_cpu.yaml``, FSDD with
``recipes/audio/fsdd_cpu.yaml``) the reference recipe and each training option are trained one
after another in the same process, through the real trainer, and a linear probe on the frozen EMA
target encoder is fitted every ``--eval-every`` steps. A run stops when the probe reaches the
dataset's target accuracy, when its training seconds pass ``--budget``, or at the recipe's
``max_steps`` (times ``--steps-factor``; the LR / EMA schedules follow that length).

Design decisions:

- **The clock counts training only.** It starts when the trainer's loop starts (data workers,
  the first step's warm-up and the trainer's logging included) and stops for every probe; probe
  seconds are reported apart. The data workers keep prefetching during a probe, so the step after
  one may find its batch ready: at most a few batches' loading, the same for every option.
- **The probes are the existing ones**, on held-out data: digits as ``mmjepa demo --image``
  (:func:`mmjepa.eval.probe.probe_dataset`: mean-pooled target tokens, standardised logistic
  regression, the fixed 70/30 split); FSDD as ``mmjepa bench quality fsdd`` (the time-mean of each
  frequency row of the target tokens, takes 0-4 held out, log-mel statistics of the training clips).
  The processed inputs are computed once per dataset and reused: the options change masks and
  training augmentation only, never the evaluation inputs.
- **Targets lie between random init and the recipe's final probe**: digits 0.90 (random init
  0.869, 600 recipe steps 0.913), FSDD 0.975 (random init 0.960, 400 steps 0.983), so every
  option has to learn something, and the reference recipe reaches the target within its own length.
- **Options are recipe overrides**; one the recipe rejects (a key this version does not have) or
  that does not apply (mask corners on a recipe whose sampler is not multi-block) is skipped with
  its reason and a null in the JSON. ``combined`` is every option that applies and loads.
- ``digits_probe_acc`` is the best option's probe at the demo's budget (the reference recipe's
  600 steps): when that option stopped early at the target, it is trained again, to the end,
  with one probe there (the same seeds: the same run, continued); when its time budget ended
  first, its last probe (``digits_probe_acc_step`` says where).
- Seconds to the target are read at the first probe that reaches it, so their resolution is
  ``--eval-every`` steps; steps to the target are the machine-independent part of the result, the
  seconds add each option's cost per step (and any load from other processes on the machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmjepa.datasets import load_builtin
from mmjepa.engine import load_recipe
from mmjepa.engine.trainer import Trainer
from mmjepa.eval.probe import linear_probe
from mmjepa.modalities import get_modality
from mmjepa.plot import plt
from mmjepa.recipes import recipe_path

from .quality import _features
from .speed import cpu_model


@dataclass
class Dataset:
    """One dataset of the benchmark: its recipe, modality, probe pooling and target accuracy."""

    recipe: str
    modality: str
    pooling: str  # "embed" (the plug-in's mean pooling) or "probe" (its probe view)
    target: float
    eval_every: int


DATASETS = {
    "digits": Dataset("image/digits_ijepa_cpu", "image", "embed", 0.90, 20),  # a digits probe takes ~1 s
    "fsdd": Dataset("audio/fsdd_cpu", "audio", "probe", 0.975, 50),
}
OPTION_NAMES = ("reference", "corners", "crop", "mask_sets", "context_once", "combined")
# training seconds per option: twice the reference recipes' idle 2-core runs (digits 600 steps in
# ~100 s, FSDD 400 steps in ~220 s), so slower options get room; the whole run stays ~30 minutes
DEFAULT_BUDGET_S = 240.0
QUICK_PROBE = (200, 100)  # --quick: probe train / test samples (stratified)
# benchmark settings on top of every recipe: no checkpoints or exports inside the timed loop
BENCH_OVERRIDES = ["train.resume=never", "train.progress=false", "train.tracker=none", "train.save_every=0",
                   "train.export_every=0"]


class Stop(Exception):
    """Raised by the clock's callback to end a run (target reached, budget spent, or last step)."""


# ----------------------------------------------------------------------------- options
def option_overrides(name: str, ds: Dataset, mcfg: Any) -> tuple[list[str] | None, str]:
    """The recipe overrides of option ``name`` on dataset ``ds`` (``mcfg``: the recipe's modality
    config), or (None, why it does not apply)."""
    m = ds.modality
    if name == "reference":
        return [], ""
    if name == "corners":
        if getattr(mcfg, "mask", None) != "multiblock" or not hasattr(mcfg, "mask_corners"):
            return None, (f"the recipe's {m} mask is {getattr(mcfg, 'mask', '?')!r}, not multi-block: its block "
                          "placement already reaches every patch")
        return [f"model.modalities.{m}.mask_corners=full"], ""
    if name == "crop":
        if not hasattr(mcfg, "crop_scale"):
            return None, f"random resized crops are an image augmentation; {m} has none"
        return [f"model.modalities.{m}.crop_scale=[0.3,1.0]"], ""
    if name == "mask_sets":
        return ["model.mask_sets=4"], ""
    if name == "context_once":
        return ["model.predictor_context_once=true"], ""
    raise ValueError(f"unknown option {name!r}; options: {', '.join(OPTION_NAMES)}")


def plan_options(names: list[str], ds: Dataset, base: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Option name -> overrides for the options that apply and that the recipe accepts; the others
    -> the reason they are skipped. ``combined`` joins every accepted non-reference option."""
    mcfg = load_recipe(recipe_path(ds.recipe), base).model_config().modality_config(ds.modality)
    plan, skipped = {}, {}
    singles = [n for n in OPTION_NAMES if n not in ("reference", "combined")]
    for name in dict.fromkeys([*names, *(singles if "combined" in names else [])]):
        if name == "combined":
            continue
        over, why = option_overrides(name, ds, mcfg)
        if over is None:
            skipped[name] = why
            continue
        try:
            load_recipe(recipe_path(ds.recipe), base + over).model_config()
        except (ValueError, TypeError) as err:  # a key or value this version does not know
            skipped[name] = f"the recipe rejects {' '.join(over)}: {err}"
            continue
        plan[name] = over
    if "combined" in names:
        parts = [n for n in singles if n in plan]
        if len(parts) >= 2:
            plan["combined"] = [o for n in parts for o in plan[n]]
        else:
            skipped["combined"] = f"fewer than two options apply ({', '.join(parts) or 'none'})"
    ordered = {n: plan[n] for n in names if n in plan}
    return ordered, {n: skipped[n] for n in names if n in skipped}


# ----------------------------------------------------------------------------- probes
class Probe:
    """The frozen-probe accuracy of a model's target encoder on one dataset's held-out split;
    inputs processed once, features recomputed per call (under ``no_grad``, in eval mode)."""

    def __init__(self, ds: Dataset, inputs: tuple[dict[str, torch.Tensor], np.ndarray, dict[str, torch.Tensor],
                                                  np.ndarray]):
        self.ds = ds
        self.train_in, self.train_y, self.test_in, self.test_y = inputs

    @torch.no_grad()
    def features(self, model: Any, inputs: dict[str, torch.Tensor], batch: int = 256) -> np.ndarray:
        mod, cfg = get_modality(self.ds.modality), model.config.modality_config(self.ds.modality)
        pool = mod.pool if self.ds.pooling == "embed" else mod.probe_features
        n = len(next(iter(inputs.values())))
        out = []
        for i in range(0, n, batch):
            b = {k: v[i : i + batch] for k, v in inputs.items()}
            h = model.encode(use_target=True, **b)[self.ds.modality]  # (B, N, D)
            out.append(pool(h, mod.valid_tokens(b), cfg).float().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        try:
            a, b = self.features(model, self.train_in), self.features(model, self.test_in)
        finally:
            model.train(was_training)
        return linear_probe(a, self.train_y, b, self.test_y)


def _subset(samples: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The first ``n`` samples of a stratified-by-class interleave (all when ``n`` is None)."""
    if n is None or n >= len(samples):
        return samples
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(int(s["label"]), []).append(s)
    rows = [s for group in zip(*by_class.values()) for s in group]
    return rows[:n]


def probe_inputs(ds: Dataset, name: str, mcfg: Any, limit: tuple[int, int] | None = None):
    """(train inputs, train labels, test inputs, test labels), processed by the modality's evaluation
    processor (the same one ``extract_features`` / ``bench quality fsdd`` use)."""
    lt, le = limit or (None, None)
    if ds.modality == "audio":
        from mmjepa.datasets import fsdd
        from mmjepa.modalities.audio import AudioProcessor

        proc = AudioProcessor(mcfg)
        tr_f, tr_v, tr_y = _features(_subset(fsdd("train"), lt), proc)
        te_f, te_v, te_y = _features(_subset(fsdd("test"), le), proc)
        return ({"input_features": tr_f, "input_features_valid": tr_v}, tr_y,
                {"input_features": te_f, "input_features_valid": te_v}, te_y)
    train, test = _subset(load_builtin(name, "train"), lt), _subset(load_builtin(name, "test"), le)
    mod = get_modality(ds.modality)
    proc = mod.build_processor(mcfg)
    key = mod.input_key

    def process(samples):
        return {key: torch.cat([proc([s[ds.modality] for s in samples[i : i + 256]])[key]
                                for i in range(0, len(samples), 256)])}

    return (process(train), np.array([s["label"] for s in train]), process(test),
            np.array([s["label"] for s in test]))


def raw_pixel_probe(limit: tuple[int, int] | None = None) -> float:
    """The probe on the raw 8x8 digit pixels, as ``mmjepa demo --image`` reports it (on the first
    ``limit`` stratified samples of each split when given)."""
    if limit is None:
        from mmjepa.demo import pixel_probe

        return pixel_probe()
    train, test = _subset(load_builtin("digits", "train"), limit[0]), _subset(load_builtin("digits", "test"), limit[1])
    flat = lambda ss: np.stack([s["image"].reshape(-1) for s in ss]).astype(np.float32)  # noqa: E731
    return linear_probe(flat(train), np.array([s["label"] for s in train]), flat(test),
                        np.array([s["label"] for s in test]))


# ----------------------------------------------------------------------------- one timed run
class Clock:
    """The trainer callback that keeps the training clock, probes every ``eval_every`` steps (off
    the clock) and ends the run."""

    def __init__(self, trainer: Trainer, probe: Callable[[Any], float], target: float, eval_every: int,
                 budget_s: float, stop_at_target: bool, log: Callable[[str], None]):
        self.trainer, self.probe, self.target, self.eval_every = trainer, probe, target, eval_every
        self.budget_s, self.stop_at_target, self.log = budget_s, stop_at_target, log
        self.curve: list[list[float]] = []  # [step, train seconds, accuracy]
        self.reached: tuple[int, float] | None = None
        self.probe_s = 0.0
        self.train_s = 0.0
        self.steps = 0
        self.first_step_s: float | None = None  # data workers' start and the first step's warm-up
        self.why = "max_steps"

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, step: int, logs: dict | None) -> None:
        self.train_s = time.perf_counter() - self.t0 - self.probe_s
        self.steps = step
        if self.first_step_s is None:
            self.first_step_s = round(self.train_s, 3)
        last = step >= self.trainer.total_steps
        over = self.train_s >= self.budget_s
        if step % self.eval_every == 0 or last or over:
            t = time.perf_counter()
            acc = self.probe(self.trainer.unwrapped)
            self.probe_s += time.perf_counter() - t
            self.curve.append([step, round(self.train_s, 3), acc])
            self.log(f"step {step:5d}  train {self.train_s:7.1f} s  probe {acc:.4f}  "
                     f"(probe {time.perf_counter() - t:.1f} s)")
            if acc >= self.target and self.reached is None:
                self.reached = (step, self.train_s)
                if self.stop_at_target:
                    self.why = "target"
                    raise Stop
        if last:
            self.why = "max_steps"
            raise Stop
        if over:
            self.why = "budget"
            raise Stop


def timed_run(ds: Dataset, overrides: list[str], probe: Callable[[Any], float], eval_every: int, budget_s: float,
              stop_at_target: bool, log: Callable[[str], None], probe_init: bool = False) -> dict[str, Any]:
    """Train one option until the target, the budget or the last step; its curve and timings
    (``probe_init``: the curve starts with the probe of the initial weights, at 0 s)."""
    recipe = load_recipe(recipe_path(ds.recipe), overrides)
    trainer = Trainer(recipe)
    clock = Clock(trainer, probe, ds.target, eval_every, budget_s, stop_at_target, log)
    trainer.callbacks.append(clock)
    if probe_init:
        t = time.perf_counter()
        clock.curve.append([0, 0.0, probe(trainer.unwrapped)])
        log(f"step     0  initial weights: probe {clock.curve[0][2]:.4f} ({time.perf_counter() - t:.1f} s)")
    clock.start()
    try:
        trainer.run()
    except Stop:
        pass
    reached = clock.reached
    return {
        "seconds_to_target": None if reached is None else round(reached[1], 3),
        "steps_to_target": None if reached is None else reached[0],
        "best_acc": max((c[2] for c in clock.curve), default=None),
        "final_acc": clock.curve[-1][2] if clock.curve else None,
        "curve": clock.curve,
        "steps": clock.steps,
        "max_steps": trainer.total_steps,
        "stopped_by": clock.why,
        "train_seconds": round(clock.train_s, 3),
        "first_step_seconds": clock.first_step_s,
        "probe_seconds": round(clock.probe_s, 3),
        "samples_per_s": round(clock.steps * trainer.samples_per_step / max(clock.train_s, 1e-9), 1),
        "overrides": overrides,
    }


# ----------------------------------------------------------------------------- the benchmark
def bench_dataset(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    ds = DATASETS[name]
    if getattr(args, f"{name}_target") is not None:
        ds = dataclasses.replace(ds, target=getattr(args, f"{name}_target"))
    eval_every = args.eval_every or (2 if args.quick else ds.eval_every)
    work = Path(args.workdir) / name
    base = list(BENCH_OVERRIDES)
    if args.quick:  # a smoke test of the harness: a few small steps, in-process data, a small probe
        base += ["train.max_steps=4", "train.log_every=2", "data.num_workers=0", "data.batch_size=16"]
    base += list(args.overrides)
    recipe = load_recipe(recipe_path(ds.recipe), base)
    if args.steps_factor != 1.0:
        base.append(f"train.max_steps={max(1, round(recipe.train.max_steps * args.steps_factor))}")
    mcfg = recipe.model_config().modality_config(ds.modality)
    if ds.modality == "audio":  # the log-mel statistics of the training clips, as bench quality fsdd
        from mmjepa.datasets import fsdd
        from mmjepa.modalities.audio import compute_normalization_stats

        mean, std = compute_normalization_stats(fsdd("train"), mcfg)
        base += [f"model.modalities.audio.mean={mean}", f"model.modalities.audio.std={std}"]
        mcfg = load_recipe(recipe_path(ds.recipe), base).model_config().modality_config(ds.modality)
    names = [o for o in args.options.split(",") if o]
    plan, skipped = plan_options(names, ds, base)
    for opt, why in skipped.items():
        log(f"[{name}] skipping option {opt}: {why}")
    limit = QUICK_PROBE if args.quick else None
    t = time.perf_counter()
    probe = Probe(ds, probe_inputs(ds, name, mcfg, limit))
    prep_s = time.perf_counter() - t

    out: dict[str, Any] = {"recipe": f"recipes/{ds.recipe}.yaml", "modality": ds.modality, "target": ds.target,
                           "eval_every": eval_every, "budget_s": args.budget, "pooling": ds.pooling,
                           "probe_train": len(probe.train_y), "probe_test": len(probe.test_y),
                           "probe_inputs_seconds": round(prep_s, 3)}
    runs: dict[str, Any] = {n: None for n in names}
    for opt, over in plan.items():
        log(f"[{name}] option {opt}: {' '.join(over) or '(the recipe as is)'}")
        try:
            r = timed_run(ds, base + over + [f"train.output_dir={work / opt}"], probe, eval_every, args.budget,
                          stop_at_target=True, log=lambda msg, o=opt: log(f"[{name}/{o}] {msg}"),
                          probe_init=opt == "reference")
        except Exception as err:  # noqa: BLE001 - one option failing (say, a new model option) ends its run only
            skipped[opt] = f"the run failed: {type(err).__name__}: {err}"
            log(f"[{name}] option {opt} failed: {type(err).__name__}: {err}")
            continue
        runs[opt] = r
        when = (f"target {ds.target} at step {r['steps_to_target']} after {r['seconds_to_target']} s"
                if r["seconds_to_target"] is not None else f"target {ds.target} not reached")
        log(f"[{name}] {opt}: {when} (best {r['best_acc']:.4f}, {r['samples_per_s']} samples/s)")
    ref = runs.get("reference")
    if ref is not None and ref["curve"] and ref["curve"][0][0] == 0:
        out["random_init_probe_acc"] = ref["curve"][0][2]
    out["options"] = runs
    out["skipped"] = skipped
    out["speedup"], out["best_option"] = speedup(runs)
    return out


def speedup(runs: dict[str, Any]) -> tuple[float | None, str | None]:
    """(reference seconds to target / the fastest option's, that option); the best option is the
    fastest to the target, else (none reached it) the one of the highest accuracy."""
    others = {n: r for n, r in runs.items() if n != "reference" and r is not None}
    if not others:
        return None, None
    reached = {n: r["seconds_to_target"] for n, r in others.items() if r["seconds_to_target"] is not None}
    best = min(reached, key=reached.get) if reached else max(others, key=lambda n: others[n]["best_acc"] or 0.0)
    ref = runs.get("reference")
    if not reached or ref is None or ref["seconds_to_target"] is None:
        return None, best
    return round(ref["seconds_to_target"] / max(reached[best], 1e-9), 4), best


def plot(results: dict[str, Any], path: Path) -> Path:
    """Probe accuracy against training seconds, one line per option, one panel per dataset."""
    names = [n for n in results if results[n].get("options")]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(6.4 * max(len(names), 1), 4.4), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], names):
        res = results[name]
        for opt, r in res["options"].items():
            if r is None or not r["curve"]:
                continue
            curve = r["curve"]
            if curve[0][0] != 0 and "random_init_probe_acc" in res:  # every option starts from the same weights
                curve = [[0, 0.0, res["random_init_probe_acc"]], *curve]
            xs, ys = [c[1] for c in curve], [c[2] for c in curve]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, label=opt,
                    color="k" if opt == "reference" else None)
        ax.axhline(res["target"], color="gray", linestyle="--", linewidth=1, label=f"target {res['target']}")
        if "random_init_probe_acc" in res:
            ax.axhline(res["random_init_probe_acc"], color="gray", linestyle=":", linewidth=1, label="random init")
        ax.set(title=f"{name}: frozen-probe accuracy vs training time", xlabel="training seconds (probes excluded)",
               ylabel="probe accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    """``mmjepa bench tta`` with parsed arguments (see ``mmjepa_cli``)."""
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)

    def log(msg: str) -> None:
        print(f"[tta {time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    datasets = [d for d in args.datasets.split(",") if d]
    for d in datasets:
        if d not in DATASETS:
            raise ValueError(f"unknown dataset {d!r}; datasets: {', '.join(DATASETS)}")
    for o in args.options.split(","):
        if o and o not in OPTION_NAMES:
            raise ValueError(f"unknown option {o!r}; options: {', '.join(OPTION_NAMES)}")
    if args.budget is None:
        args.budget = 20.0 if args.quick else DEFAULT_BUDGET_S
    results = {d: bench_dataset(d, args, log) for d in datasets}
    res: dict[str, Any] = {"benchmark": "tta", "quick": bool(args.quick)}
    for d in DATASETS:
        res[f"{d}_tta_speedup"] = results[d]["speedup"] if d in results else None
    res.update(digits_probe_acc=None, digits_probe_acc_option=None, digits_probe_acc_step=None,
               digits_raw_pixel_probe_acc=None)
    if "digits" in results:
        (res["digits_probe_acc"], res["digits_probe_acc_option"],
         res["digits_probe_acc_step"]) = _digits_final_probe(results["digits"], args, log)
        res["digits_raw_pixel_probe_acc"] = raw_pixel_probe(QUICK_PROBE if args.quick else None)
    res["datasets"] = results
    json_path = Path(args.json) if args.json else Path(args.workdir) / "tta.json"
    res["plot"] = str(plot(results, json_path.with_suffix(".png")))
    res["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                      "torch": torch.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "processor": cpu_model()}
    res["command"] = "mmjepa " + " ".join(getattr(args, "argv", []))
    res["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=2, default=float)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text + "\n")
    print(text)
    return 0


def _digits_final_probe(res: dict[str, Any], args: argparse.Namespace,
                        log: Callable[[str], None]) -> tuple[float | None, str | None, int | None]:
    """(probe, option, step) of the best digits option at the recipe's full length (``max_steps``):
    read from its curve when its run got there or its budget ended first (then at its last step),
    else (it stopped at the target) from a second run of it to the end, probed once there."""
    best = res["best_option"] or ("reference" if res["options"].get("reference") else None)
    r = res["options"].get(best) if best else None
    if r is None or not r["curve"]:
        return None, None, None
    if r["stopped_by"] != "target":
        return r["curve"][-1][2], best, r["curve"][-1][0]
    log(f"[digits] training the best option ({best}) again to step {r['max_steps']} for its final probe")
    ds = dataclasses.replace(DATASETS["digits"], target=res["target"])
    mcfg = load_recipe(recipe_path(ds.recipe), r["overrides"]).model_config().modality_config(ds.modality)
    probe = Probe(ds, probe_inputs(ds, "digits", mcfg, QUICK_PROBE if args.quick else None))
    again = timed_run(ds, r["overrides"], probe, eval_every=10**9, budget_s=float("inf"), stop_at_target=False,
                      log=lambda msg: log(f"[digits/{best} to the end] {msg}"))
    res["best_option_full_length"] = again
    return again["final_acc"], best, again["steps"]
