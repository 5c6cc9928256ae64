"""``mmjepa demo``: the whole idea on a laptop — one model, three modalities, one space.

Pretrains the tri-modal recipe ``recipes/multimodal/spoken_digits_cpu.yaml`` (a handwritten digit,
a spoken recording of it and its written word; about 5 minutes on 2 CPU cores) through the real
trainer, then on held-out data (FSDD takes 0-4, a held-out fifth of the digit images, every
caption) measures class-match retrieval across the modalities and zero-shot classification from
text prompts, against the same model at random initialisation. Writes to ``--output``:
``model/`` (``save_pretrained``), ``metrics.json`` and ``demo_report.png`` (loss curves per term,
effective rank over time, a 2-D map of the shared space, retrieval examples).

``mmjepa demo --image`` runs the earlier single-modality quickstart instead: I-JEPA on the
digit images, with linear probes against random initialisation and raw pixels.

The data root is ``$MMJEPA_DATA_DIR``, else ``../shared/data`` beside the checkout; without
either, FSDD is downloaded once into the user's cache (:mod:`mmjepa.download`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import DIGIT_TEMPLATES, DIGIT_WORDS, digits, fsdd, load_builtin
from .engine import load_recipe, train
from .eval.crossmodal import evaluate_retrieval, zeroshot_classify
from .eval.probe import linear_probe, probe_dataset
from .models import MMJepaModel
from .plot import line_plot, plt
from .recipes import recipe_path
from .retrieval.items import embed_items

MODALITIES = ("image", "audio", "text")
DIRECTIONS = [("audio", "image"), ("image", "audio"), ("audio", "text"), ("text", "audio"), ("image", "text"),
              ("text", "image")]
MARKERS = {"image": "o", "audio": "^", "text": "s"}


# ----------------------------------------------------------------------------- held-out data
def test_items() -> list[dict[str, Any]]:
    """One item per test image, clip and caption, each labelled with its digit."""
    items = [{"__key__": f"image-{i}", "image": s["image"], "label": s["label"]}
             for i, s in enumerate(digits("test", test_fraction=0.2))]
    items += [{"__key__": s["__key__"], "audio": s["audio"], "label": s["label"]} for s in fsdd("test")]
    items += [{"__key__": t.format(w), "text": t.format(w), "label": y}
              for y, w in enumerate(DIGIT_WORDS) for t in DIGIT_TEMPLATES]
    return items


def evaluate(model: MMJepaModel, items: list[dict[str, Any]], progress: bool = False) -> dict[str, Any]:
    """Class-match recall@1 in the six directions (by similarity and by prediction) and zero-shot
    accuracy of images and sounds from the captions' templates."""
    ret = evaluate_retrieval(model, items, MODALITIES, positives="class", ks=(1, 5), progress=progress)
    out: dict[str, Any] = {}
    for q, g in DIRECTIONS:
        out[f"{q}_to_{g}_r1"] = ret[f"{q}_to_{g}"]["r1"]
        if f"{q}_to_{g}_predicted" in ret:
            out[f"{q}_to_{g}_r1_predicted"] = ret[f"{q}_to_{g}_predicted"]["r1"]
    for m in ("image", "audio"):
        zs = zeroshot_classify(model, [it for it in items if m in it], m, DIGIT_WORDS, DIGIT_TEMPLATES, progress=False)
        out[f"{m}_zeroshot_acc"] = zs["accuracy"]
    return out


# ----------------------------------------------------------------------------- the report
def _pca_2d(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def write_report(path: Path, history: list[dict[str, Any]], model: MMJepaModel, items: list[dict[str, Any]],
                 metrics: dict[str, Any]) -> Path:
    """demo_report.png: loss per term, RankMe per modality, the shared space in 2-D, retrieval examples."""
    done = embed_items(model, items, MODALITIES, progress=False)
    fig = plt.figure(figsize=(15, 10), dpi=90)
    grid = fig.add_gridspec(4, 12, height_ratios=[3, 3, 1.2, 1.2], hspace=0.6, wspace=0.5)

    ax = fig.add_subplot(grid[0:2, 0:4])
    terms = sorted({k for h in history for k in h if k.startswith("loss/")})
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # more terms than tab10 has colours
    for k in terms:
        pts = [(h["step"], h[k]) for h in history if k in h and h[k] > 0]
        if pts:
            ax.plot(*zip(*pts), label=k[len("loss/"):], linewidth=1.5)
    ax.set(title="training loss per term", xlabel="step", yscale="log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(grid[0:2, 4:8])
    for m in MODALITIES:
        pts = [(h["step"], h[f"monitor/{m}/rankme"]) for h in history if f"monitor/{m}/rankme" in h]
        if pts:
            ax.plot(*zip(*pts), label=m, marker=MARKERS[m], markersize=3)
    ax.set(title="effective rank (RankMe) of the embeddings", xlabel="step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(grid[0:2, 8:12])
    emb = np.concatenate([done.embeddings[m].numpy() for m in MODALITIES])
    xy = _pca_2d(emb)
    start = 0
    for m in MODALITIES:
        n = len(done.keys[m])
        sc = ax.scatter(xy[start:start + n, 0], xy[start:start + n, 1], c=done.labels[m], cmap="tab10", vmin=-0.5,
                        vmax=9.5, marker=MARKERS[m], s=14 if m != "text" else 40, alpha=0.75, label=m,
                        edgecolors="k" if m == "text" else "none", linewidths=0.4)
        start += n
    ax.set(title="the shared space (PCA), coloured by digit", xticks=[], yticks=[])
    ax.legend(fontsize=8, markerscale=1.2)
    fig.colorbar(sc, ax=ax, ticks=range(10), fraction=0.046)

    by_key = {it["__key__"]: it for it in items}
    # an audio query and its five best images; a caption and its five best clips
    a_idx = next(i for i, y in enumerate(done.labels["audio"]) if y == 7)
    t_idx = next(i for i, k in enumerate(done.keys["text"]) if done.labels["text"][i] == 3)
    rows = [("audio", a_idx, "image"), ("text", t_idx, "audio")]
    for r, (qm, qi, gm) in enumerate(rows):
        scores = done.embeddings[gm] @ done.embeddings[qm][qi]
        top = scores.topk(5).indices.tolist()
        ax = fig.add_subplot(grid[2 + r, 0:2])
        _show(ax, qm, by_key[done.keys[qm][qi]])
        ax.set_title(f"query ({qm}, digit {done.labels[qm][qi]})", fontsize=8)
        for j, gi in enumerate(top):
            ax = fig.add_subplot(grid[2 + r, 2 + 2 * j:4 + 2 * j])
            _show(ax, gm, by_key[done.keys[gm][gi]])
            ok = done.labels[gm][gi] == done.labels[qm][qi]
            ax.set_title(f"#{j + 1}: digit {done.labels[gm][gi]} ({float(scores[gi]):.2f})", fontsize=8,
                         color="green" if ok else "red")
    fig.suptitle(f"mmjepa tri-modal demo: {metrics['steps']} steps, class-match R@1 audio->image "
                 f"{metrics['audio_to_image_r1']:.2f}, image->audio {metrics['image_to_audio_r1']:.2f}, "
                 f"text->audio {metrics['text_to_audio_r1']:.2f} (chance 0.10)", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _show(ax: Any, modality: str, item: dict[str, Any]) -> None:
    """An image as pixels, a clip as its waveform's spectrogram, a caption as text."""
    ax.set_xticks([])
    ax.set_yticks([])
    if modality == "image":
        ax.imshow(item["image"], cmap="gray_r")
    elif modality == "audio":
        a = item["audio"]
        ax.specgram(a["array"], Fs=a["sampling_rate"], NFFT=256, noverlap=128, cmap="magma")
    else:
        ax.text(0.5, 0.5, item["text"], ha="center", va="center", fontsize=8, wrap=True)


# ----------------------------------------------------------------------------- the demos
def run_trimodal_demo(output: str | Path = "demo_output", steps: int = 100, overrides: list[str] | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Train, save, evaluate, draw; returns the metrics (also in ``output/metrics.json``)."""
    output = Path(output)
    recipe = load_recipe(recipe_path("multimodal/spoken_digits_cpu"),
                         [f"train.output_dir={output / 'run'}", "train.resume=never", f"train.max_steps={steps}",
                          "train.log_every=5", *(overrides or [])])
    recipe.train.progress = progress
    t0 = time.time()
    result = train(recipe)
    train_s = time.time() - t0
    model = result.model.eval()
    items = test_items()
    metrics: dict[str, Any] = {"steps": result.steps, "train_seconds": round(train_s, 1),
                               "train_samples_per_s": round(result.train_samples_per_s, 1), "chance_r1": 0.1}
    metrics.update(evaluate(model, items))
    torch.manual_seed(recipe.train.seed)
    random = evaluate(MMJepaModel(model.config), items)
    metrics["random_init"] = {k: v for k, v in random.items() if not k.endswith("_predicted")}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # weights, processor (tokenizer included) and a model card with these metrics: AutoModel /
    # AutoProcessor.from_pretrained("demo_output/model") load them
    model.save_pretrained(output / "model", metrics={k: v for k, v in metrics.items() if not isinstance(v, dict)})
    write_report(output / "demo_report.png", result.history, model, items, metrics)
    return metrics


def pixel_probe() -> float:
    """The probe on raw 8x8 pixels (a reference point, not a learned representation)."""
    train_set, test_set = load_builtin("digits", "train"), load_builtin("digits", "test")
    flat = lambda ss: np.stack([s["image"].reshape(-1) for s in ss]).astype(np.float32)  # noqa: E731
    return linear_probe(flat(train_set), np.array([s["label"] for s in train_set]),
                        flat(test_set), np.array([s["label"] for s in test_set]))


def run_image_demo(output_dir: str | Path = "demo_output", overrides: list[str] | None = None,
                   quiet: bool = False) -> dict[str, Any]:
    """I-JEPA on the digit images + linear probes; returns the numbers (also in ``output_dir/demo.json``)."""
    recipe = load_recipe(recipe_path("image/digits_ijepa_cpu"),
                         [f"train.output_dir={output_dir}", "train.resume=never", *(overrides or [])])
    t0 = time.time()
    result = train(recipe)
    train_s = time.time() - t0
    torch.manual_seed(recipe.train.seed)
    random_model = MMJepaModel(result.model.config)
    out = {
        "steps": result.steps,
        "train_seconds": round(train_s, 1),
        "train_samples_per_s": round(result.train_samples_per_s, 1),
        "probe_acc": probe_dataset(result.model, "digits", "image", progress=not quiet),
        "random_probe_acc": probe_dataset(random_model, "digits", "image", progress=not quiet),
        "pixel_probe_acc": pixel_probe(),
    }
    hist = [h for h in result.history if "loss" in h]
    if hist:
        line_plot({"train loss": ([h["step"] for h in hist], [h["loss"] for h in hist])},
                  Path(output_dir) / "loss.png", title="I-JEPA on digits: latent prediction loss",
                  xlabel="step", ylabel="loss (log scale)", log_y=True)
    (Path(output_dir) / "demo.json").write_text(json.dumps(out, indent=2))
    return out


def _print_image(out: dict[str, Any], output_dir: str) -> int:
    print()
    print(f"I-JEPA on sklearn digits: {out['steps']} steps in {out['train_seconds']} s "
          f"({out['train_samples_per_s']} samples/s)")
    print("linear probe accuracy on the held-out 30% (frozen features, logistic regression):")
    print(f"  pretrained target encoder : {out['probe_acc']:.4f}")
    print(f"  same encoder, random init : {out['random_probe_acc']:.4f}")
    print(f"  raw pixels (reference)    : {out['pixel_probe_acc']:.4f}")
    print(f"loss curve: {Path(output_dir) / 'loss.png'}")
    return 0 if out["probe_acc"] > out["random_probe_acc"] else 1


def _print_trimodal(m: dict[str, Any], output: str) -> int:
    rnd = m["random_init"]
    print()
    print(f"tri-modal JEPA on spoken digits: {m['steps']} steps in {m['train_seconds']} s")
    print("held-out class-match retrieval R@1 (chance 0.10)   trained   by prediction   random init")
    for q, g in DIRECTIONS:
        k = f"{q}_to_{g}_r1"
        pred = f"{m[k + '_predicted']:.3f}" if k + "_predicted" in m else "-"
        print(f"  {q:>5} -> {g:<5}                                   {m[k]:.3f}   {pred:>13}   {rnd[k]:11.3f}")
    for mod in ("image", "audio"):
        k = f"{mod}_zeroshot_acc"
        print(f"  zero-shot {mod:<5} accuracy from captions           {m[k]:.3f}   {'':>13}   {rnd[k]:11.3f}")
    print(f"model: {Path(output) / 'model'}   report: {Path(output) / 'demo_report.png'}   "
          f"numbers: {Path(output) / 'metrics.json'}")
    return 0 if m["audio_to_image_r1"] > rnd["audio_to_image_r1"] else 1


def run(args: argparse.Namespace) -> int:
    """``mmjepa demo`` with parsed arguments (see ``mmjepa_cli``)."""
    if args.image:
        out = run_image_demo(args.output, args.overrides)
        code = _print_image(out, args.output)
    else:
        out = run_trimodal_demo(args.output, args.steps, args.overrides)
        code = _print_trimodal(out, args.output)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return code
