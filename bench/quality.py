"""Quality benchmarks on real data, trained through the real trainer (``mmjepa.train``).

``mmjepa bench quality shakespeare --json PATH``
    Masked-span prediction against tuned ModernBERT and BERT masked-language models at equal
    wall-clock (``mmjepa.bench.shakespeare``).

``mmjepa bench quality fsdd --json PATH``
    Free Spoken Digits (train: takes 5-49, test: takes 0-4). A few minutes of CPU pretraining
    (recipes/audio/fsdd_cpu.yaml), then a logistic-regression probe on mean-pooled frozen
    target-encoder tokens, against the same probe on a randomly initialised encoder and on
    mean-pooled log-mel frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmjepa.datasets import fsdd
from mmjepa.engine import load_recipe, train
from mmjepa.eval.probe import linear_probe
from mmjepa.modalities import get_modality
from mmjepa.modalities.audio import AudioProcessor, compute_normalization_stats
from mmjepa.models import MMJepaModel
from mmjepa.recipes import recipe_path

from .multimodal import bench_spoken_digits, bench_spoken_digits_spans, bench_tuxpaint, bench_tuxpaint_spans
from .shakespeare import bench_shakespeare, merge, parse_pairs, trainable


# ============================================================================ fsdd
def _features(samples: list[dict[str, Any]], proc: Any) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    feats, valid, labels = [], [], []
    for s in samples:
        f, v = proc.preprocess(s["audio"])
        feats.append(f)
        valid.append(v)
        labels.append(s["label"])
    return torch.stack(feats), torch.stack(valid), np.array(labels)


@torch.no_grad()
def _embed(model: Any, feats: torch.Tensor, valid: torch.Tensor, batch: int = 128) -> dict[str, np.ndarray]:
    """Frozen target-encoder features of each clip, pooled two ways over its real tokens:

    ``freq_rows``: the audio plug-in's probe view (the time-mean of each frequency row of the (F, T)
    token grid, concatenated -> (n, F*D)), the frequency-resolved, time-averaged view that the
    log-mel baseline also gets; ``mean``: the mean over all real tokens -> (n, D), ``model.embed``'s pooling.
    """
    model.eval()
    audio, cfg = get_modality("audio"), model.config.modality_config("audio")
    rows, means = [], []
    for i in range(0, len(feats), batch):
        b = {"input_features": feats[i : i + batch], "input_features_valid": valid[i : i + batch]}
        h = model.encode(**b)["audio"]  # (B, F*T, D)
        v = audio.valid_tokens(b)
        means.append(audio.pool(h, v, cfg))  # (B, D)
        rows.append(audio.probe_features(h, v, cfg))  # (B, F*D)
    return {"freq_rows": torch.cat(rows).numpy(), "mean": torch.cat(means).numpy()}


def _probes(model: Any, train: tuple, test: tuple) -> dict[str, float]:
    a, b = _embed(model, *train[:2]), _embed(model, *test[:2])
    return {k: linear_probe(a[k], train[2], b[k], test[2]) for k in a}


def _logmel_pool(feats: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int], pt: int) -> np.ndarray:
    """Mean over the real frames (those inside real time patches) of each clip's log-mel -> (n, F)."""
    cols = valid.reshape(len(valid), *grid).any(1)  # (n, Tg)
    frames = cols.repeat_interleave(pt, 1).float()  # (n, T)
    return ((feats * frames[:, None]).sum(-1) / frames.sum(-1, keepdim=True)).numpy()


def bench_fsdd(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) / "fsdd"
    overrides = [f"train.output_dir={work / 'mmjepa'}", "train.resume=never", "train.progress=false",
                 "train.tracker=none"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    recipe = load_recipe(recipe_path("audio/fsdd_cpu"), overrides + list(args.overrides))
    train_set, test_set = fsdd("train"), fsdd("test")
    mean, std = compute_normalization_stats(train_set, recipe.model_config().modality_config("audio"))
    recipe = load_recipe(recipe.to_dict(), [f"model.modalities.audio.mean={mean}", f"model.modalities.audio.std={std}"])
    cfg = recipe.model_config()
    acfg = cfg.modality_config("audio")

    print(f"[fsdd] training mmjepa for {recipe.train.max_steps} steps ...", flush=True)
    result = train(recipe)
    proc = AudioProcessor(acfg)
    tr_f, tr_v, tr_y = _features(train_set, proc)
    te_f, te_v, te_y = _features(test_set, proc)
    torch.manual_seed(args.seed)
    random_model = MMJepaModel(cfg)
    train_d, test_d = (tr_f, tr_v, tr_y), (te_f, te_v, te_y)
    trained, rand = _probes(result.model, train_d, test_d), _probes(random_model, train_d, test_d)
    res = {
        "benchmark": "fsdd",
        "probe_acc": trained["freq_rows"],
        "random_probe_acc": rand["freq_rows"],
        "logmel_probe_acc": linear_probe(_logmel_pool(tr_f, tr_v, acfg.grid, acfg.patch[1]), tr_y,
                                   _logmel_pool(te_f, te_v, acfg.grid, acfg.patch[1]), te_y),
        "probe_acc_global_mean": trained["mean"],
        "random_probe_acc_global_mean": rand["mean"],
        "pooling": "time-mean of each frequency row of target-encoder tokens, concatenated (log-mel: "
                   "time-mean of each mel bin); *_global_mean: mean over all tokens",
        "train_clips": len(train_set), "test_clips": len(test_set),
        "norm_mean": mean, "norm_std": std,
        "steps": result.steps, "wall_clock_s": result.elapsed_s, "batch_size": recipe.data.batch_size,
        "params_trainable": trainable(result.model),
        "final_logs": result.history[-1] if result.history else None,
        "torch_threads": torch.get_num_threads(),
    }
    return res


BENCHES = {"shakespeare": bench_shakespeare, "fsdd": bench_fsdd, "spoken_digits": bench_spoken_digits,
           "tuxpaint": bench_tuxpaint, "tuxpaint_spans": bench_tuxpaint_spans, "spoken_digits_spans": bench_spoken_digits_spans}


def run(args: argparse.Namespace) -> int:
    """``mmjepa bench quality NAME`` with parsed arguments (see ``mmjepa_cli``)."""
    t0 = time.perf_counter()
    args.baseline_lr = parse_pairs(args.baseline_lr, "--baseline-lr")
    args.baseline_warmup = parse_pairs(args.baseline_warmup, "--baseline-warmup")
    if args.merge:
        if args.name != "shakespeare":
            raise ValueError("--merge combines shakespeare runs only")
        res = merge(args.merge, Path(args.workdir) / "shakespeare_merged")
    else:
        res = BENCHES[args.name](args)
    res["total_s"] = time.perf_counter() - t0
    res["command"] = "mmjepa " + " ".join(args.argv)
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0
