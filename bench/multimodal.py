"""Tri-modal quality benchmarks: the shared space against contrastive training on real data.

``mmjepa bench quality spoken_digits --json PATH``
    Spoken, handwritten and written digits (``mmjepa.datasets.spoken_digits``: FSDD clips, scikit-
    learn digit images and the digits' words, paired at class level). Every model trains through
    the trainer on ``recipes/multimodal/spoken_digits_cpu.yaml`` for the same wall-clock budget
    (``--budget`` seconds each; a short calibration run measures each model's seconds per step):
    ours (the recipe's objectives), the same architecture with the contrastive term only, and with
    supervised classification (an upper bound); then the low-pair regime, where 5% of the training
    samples hold all three modalities and each of the others one, for ours and contrastive-only.
    Evaluation on the test takes of FSDD (0-4), the held-out 20% of the digit images and every
    caption: class-match recall@1 across modalities (a query is a hit when its best-scored item is
    of its class) by embedding similarity, and by predicting the target's embedding when the model
    can; linear probes on frozen per-modality features; random-init encoders and raw features
    (pixels, log-mel) as references.

``mmjepa bench quality tuxpaint --json PATH``
    Tux Paint's 785 clip-art stamps with their captions and, for 131, their sounds
    (``recipes/multimodal/tuxpaint_cpu.yaml``; a fixed 80/20 split). Ours and contrastive-only, the
    same wall-clock budget each; instance-level recall@1/5/10 image<->caption on the 157 test
    stamps and sound<->caption on the 27 with a sound, against chance.

``mmjepa bench quality tuxpaint_spans --json PATH``
    Does the picture help fill a caption's masked words? The Tux Paint recipe plus a readout
    objective trained with the images as context (``readout: {modality: text, context: both}``),
    ``--budget`` seconds through the trainer; then, on the 157 test stamps, masked-token top-1 / top-5
    of the caption tokens (special tokens never masked nor predicted) with the stamp's own image,
    without any image, and with another test stamp's image (a fixed derangement), on the same span
    masks (20 per caption, the recipe's text masking, one seed); a paired bootstrap 95% interval
    over captions of the gain of the image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmjepa.datasets import DIGIT_TEMPLATES, DIGIT_WORDS, digits, fsdd, spoken_digits, tuxpaint
from mmjepa.engine import load_recipe, train
from mmjepa.eval.probe import linear_probe
from mmjepa.eval.retrieval import class_positives, recall_at_k
from mmjepa.eval.spans import conditioned_hits, paired_bootstrap, sequence_span_masks
from mmjepa.modalities import get_modality
from mmjepa.models import MMJepaModel
from mmjepa.objectives import PooledPrediction
from mmjepa.recipes import recipe_path

MODALITIES = ("image", "audio", "text")
PAIRS = [("audio", "image"), ("image", "audio"), ("audio", "text"), ("text", "audio"), ("image", "text"),
         ("text", "image")]

# baselines: recipe overrides on top of the benchmark's recipe (the target encoders follow the
# online ones at once, momentum 0, since these objectives have no use for a slow target)
CONTRASTIVE = ["model.objectives={contrastive: {weight: 1.0, temperature: 0.1}}", "model.ema_momentum_start=0.0",
               "model.ema_momentum_end=0.0"]
SUPERVISED = ["model.objectives={supervised: {num_classes: 10}}", "model.ema_momentum_start=0.0",
              "model.ema_momentum_end=0.0"]
# the low-pair regime: 5% of the training samples hold all three modalities, each of the others one.
# Ours reads both (the pairs drawn once in four); contrastive training can use the pairs only.
_SOURCE = "{{type: builtin, name: spoken_digits, split: train, weight: {w}, options: {{paired_fraction: 0.05, keep: {k}}}}}"
LOW_PAIR = [f"data.sources=[{_SOURCE.format(w=1, k='paired')}, {_SOURCE.format(w=3, k='unpaired')}]"]
LOW_PAIR_PAIRS_ONLY = [f"data.sources=[{_SOURCE.format(w=1, k='paired')}]"]
# alignment without negatives (option a: the pooled prediction; b: plus SIGReg on pooled embeddings)
ABLATION = {
    "ours_no_contrastive": ["model.objectives={intra: {}, cross: {hide: all}, pooled: {}, sigreg: {weight: 0.05, over: tokens}}"],
    "ours_no_contrastive_sigreg_pooled": ["model.objectives={intra: {}, cross: {hide: all}, pooled: {}, "
                                          "sigreg: {weight: 0.05, over: tokens}, sigreg_pooled: {type: sigreg, weight: 0.05, over: samples}}"],
}


# ----------------------------------------------------------------------------- evaluation data
class EvalSets:
    """The test sets (and the probes' training sets), processed once for every model."""

    def __init__(self, config: Any):
        self.config = config
        train_img, test_img = digits("train", test_fraction=0.2), digits("test", test_fraction=0.2)
        train_audio, test_audio = fsdd("train"), fsdd("test")
        texts = [(t.format(w), y) for y, w in enumerate(DIGIT_WORDS) for t in DIGIT_TEMPLATES]
        self.raw = {"image": ([s["image"] for s in train_img], [s["image"] for s in test_img]),
                    "audio": ([s["audio"] for s in train_audio], [s["audio"] for s in test_audio]),
                    "text": (None, [t for t, _ in texts])}
        self.labels = {"image": (np.array([s["label"] for s in train_img]), np.array([s["label"] for s in test_img])),
                       "audio": (np.array([s["label"] for s in train_audio]), np.array([s["label"] for s in test_audio])),
                       "text": (None, np.array([y for _, y in texts]))}
        self.inputs = {}  # modality -> (train inputs, test inputs), processed by the model's processors
        for m in MODALITIES:
            proc = get_modality(m).build_processor(config.modality_config(m))
            self.inputs[m] = tuple(None if vals is None else proc(vals) for vals in self.raw[m])

    def raw_features(self, modality: str, split: int) -> np.ndarray:
        """Pixels, or the time-mean of each mel bin over real frames: the raw-feature probes' view."""
        x = self.inputs[modality][split]
        if modality == "image":
            return x["pixel_values"].flatten(1).numpy()
        cfg = self.config.modality_config("audio")
        frames = x["input_features_valid"].reshape(-1, *cfg.grid).any(1).repeat_interleave(cfg.patch[1], 1).float()
        return ((x["input_features"] * frames[:, None]).sum(-1) / frames.sum(-1, keepdim=True)).numpy()


def _batches(inputs: dict[str, torch.Tensor], size: int = 256):
    n = next(iter(inputs.values())).shape[0]
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in inputs.items()}


@torch.no_grad()
def encode_sets(model: MMJepaModel, sets: EvalSets, use_target: bool) -> dict[str, Any]:
    """Per modality and split: embeddings (L2-normalised pooled latents), probe features, and the
    embeddings of every other modality predicted from it (when the model has a pooled query)."""
    model.eval()
    can_predict = any(isinstance(o, PooledPrediction) for o in model.objectives.values())
    out: dict[str, Any] = {}
    for m in MODALITIES:
        mod, cfg = get_modality(m), model.config.modality_config(m)
        for split, inputs in enumerate(sets.inputs[m]):
            if inputs is None:
                continue
            emb, probe, pred = [], [], {t: [] for t in MODALITIES if t != m}
            for b in _batches(inputs):
                h = model.encode(use_target=use_target, **b)[m]
                valid = mod.valid_tokens(b)
                emb.append(torch.nn.functional.normalize(mod.pool(h, valid, cfg), dim=-1))
                probe.append(mod.probe_features(h, valid, cfg))
                if can_predict and split == 1:
                    for t in pred:
                        pred[t].append(model.predict_embedding(t, **b))
            out[m, split] = {"emb": torch.cat(emb), "probe": torch.cat(probe).numpy(),
                             "pred": {t: torch.cat(v) for t, v in pred.items() if v}}
    return out


def evaluate(model: MMJepaModel, sets: EvalSets, use_target: bool = True) -> dict[str, float]:
    """Class-match R@1 both ways for every pair (similarity and prediction) and per-modality probes."""
    enc = encode_sets(model, sets, use_target)
    res: dict[str, float] = {}
    for q, g in PAIRS:
        pos = class_positives(sets.labels[q][1], sets.labels[g][1])
        res[f"{q}_to_{g}_r1"] = recall_at_k(enc[q, 1]["emb"] @ enc[g, 1]["emb"].T, pos, ks=(1,))["r1"]
        pred = enc[q, 1]["pred"].get(g)
        if pred is not None:
            res[f"{q}_to_{g}_r1_predicted"] = recall_at_k(pred @ enc[g, 1]["emb"].T, pos, ks=(1,))["r1"]
    for m in ("image", "audio"):
        (ytr, yte) = sets.labels[m]
        res[f"{m}_probe_acc"] = linear_probe(enc[m, 0]["probe"], ytr, enc[m, 1]["probe"], yte)
    return res


# ----------------------------------------------------------------------------- training
def _train_for(recipe_file: Path, overrides: list[str], budget_s: float, work: Path, tag: str, log,
               steps: int | None = None) -> tuple[Any, dict]:
    """Train with ``overrides`` for about ``budget_s`` seconds: a 12-step calibration measures the
    seconds per step (after the first), then the run gets ``budget_s / that`` steps. ``steps``: that
    many steps instead (no calibration; for a machine whose load would make the budget unfair)."""
    base = [f"train.output_dir={work / tag}", "train.resume=never", "train.progress=false", "train.tracker=none",
            "train.save_every=0"]
    if not steps:
        calib = train(load_recipe(recipe_file, [*overrides, *base, "train.max_steps=12", "train.log_every=1",
                                                f"train.output_dir={work / (tag + '_calibration')}"]))
        steps = max(20, int(budget_s * calib.train_samples_per_s / calib.samples_seen * 12))
        log(f"[{tag}] {calib.train_samples_per_s:.1f} samples/s in calibration -> {steps} steps for {budget_s:.0f} s")
    t0 = time.perf_counter()
    result = train(load_recipe(recipe_file, [*overrides, *base, f"train.max_steps={steps}"]))
    info = {"steps": result.steps, "train_s": time.perf_counter() - t0, "samples_per_s": result.train_samples_per_s,
            "final_logs": result.history[-1] if result.history else None}
    log(f"[{tag}] {result.steps} steps in {info['train_s']:.0f} s")
    return result.model, info


def bench_spoken_digits(args: argparse.Namespace) -> dict[str, Any]:
    log = lambda s: print(s, flush=True)  # noqa: E731
    work = Path(args.workdir) / "spoken_digits"
    recipe_file = recipe_path("multimodal/spoken_digits_cpu")
    ours = list(args.overrides)
    config = load_recipe(recipe_file, ours).model_config()
    sets = EvalSets(config)
    budget = args.budget
    res: dict[str, Any] = {"benchmark": "spoken_digits", "budget_s": budget, "runs": {}}

    torch.manual_seed(args.seed)
    random_model = MMJepaModel(config)
    rnd = evaluate(random_model, sets)
    res["random"] = rnd
    res["raw_probe_acc"] = {m: linear_probe(sets.raw_features(m, 0), sets.labels[m][0], sets.raw_features(m, 1),
                                            sets.labels[m][1]) for m in ("image", "audio")}
    runs = [("ours", ours), ("contrastive", CONTRASTIVE + ours), ("supervised", SUPERVISED + ours)]
    if args.ablation:
        runs += [(tag, ours + extra) for tag, extra in ABLATION.items()]
    if not args.no_low_pair:
        runs += [("lowpair_ours", ours + LOW_PAIR), ("lowpair_contrastive", CONTRASTIVE + ours + LOW_PAIR_PAIRS_ONLY)]
    for tag, overrides in runs:
        model, info = _train_for(recipe_file, overrides, budget, work, tag, log)
        res["runs"][tag] = {**info, "overrides": overrides, **evaluate(model, sets)}
        if tag.endswith("ours"):  # the online encoders too, for the record
            res["runs"][tag]["online"] = evaluate(model, sets, use_target=False)
        log(f"[{tag}] " + ", ".join(f"{k} {v:.3f}" for k, v in res["runs"][tag].items()
                                    if isinstance(v, float) and ("r1" in k or "probe" in k)))
    # the top level: the headline numbers
    for prefix, (o, c) in (("", ("ours", "contrastive")), ("lowpair_", ("lowpair_ours", "lowpair_contrastive"))):
        if o not in res["runs"]:
            continue
        for key in ("audio_to_image_r1", "image_to_audio_r1", "audio_to_text_r1", "text_to_audio_r1",
                    "image_to_text_r1", "image_probe_acc", "audio_probe_acc"):
            res[f"{prefix}{key}"] = res["runs"][o][key]
        for key in ("audio_to_image_r1", "image_to_audio_r1", "image_probe_acc", "audio_probe_acc"):
            res[f"{prefix}contrastive_{key}"] = res["runs"][c][key]
    if "supervised" in res["runs"]:
        res["supervised_audio_to_image_r1"] = res["runs"]["supervised"]["audio_to_image_r1"]
    res["chance_r1"] = 0.1
    return res


# ============================================================================ tux paint
@torch.no_grad()
def _embed_all(model: MMJepaModel, modality: str, values: list, use_target: bool = True) -> dict[str, torch.Tensor]:
    """Embeddings of raw values of one modality, and the other modalities' embeddings predicted from them."""
    model.eval()
    proc = get_modality(modality).build_processor(model.config.modality_config(modality))
    can_predict = any(isinstance(o, PooledPrediction) for o in model.objectives.values())
    emb, pred = [], {t: [] for t in model.modality_names if t != modality}
    for i in range(0, len(values), 128):
        b = proc(values[i : i + 128])
        emb.append(model.embed(use_target=use_target, **b)[modality])
        if can_predict:
            for t in pred:
                pred[t].append(model.predict_embedding(t, **b))
    return {"emb": torch.cat(emb), **({f"pred_{t}": torch.cat(v) for t, v in pred.items()} if can_predict else {})}


def evaluate_tuxpaint(model: MMJepaModel, test: list[dict[str, Any]], use_target: bool = True) -> dict[str, float]:
    """Instance-level recall@1/5/10 image<->caption on the test stamps, sound<->caption on those
    with a sound; by similarity, and by prediction when the model can."""
    res: dict[str, float] = {}
    groups = {("image", "text"): test, ("audio", "text"): [s for s in test if s["audio"] is not None]}
    for (a, b), items in groups.items():
        ea, eb = _embed_all(model, a, [s[a] for s in items], use_target), _embed_all(model, b, [s[b] for s in items], use_target)
        pos = torch.eye(len(items), dtype=torch.bool)
        for q, g, eq, eg in ((a, b, ea, eb), (b, a, eb, ea)):
            for k, v in recall_at_k(eq["emb"] @ eg["emb"].T, pos, ks=(1, 5, 10)).items():
                res[f"{q}_to_{g}_{k}"] = v
            if f"pred_{g}" in eq:
                for k, v in recall_at_k(eq[f"pred_{g}"] @ eg["emb"].T, pos, ks=(1, 5, 10)).items():
                    if k.startswith("r"):
                        res[f"{q}_to_{g}_{k}_predicted"] = v
        res[f"{a}_{b}_gallery"] = len(items)
    return res


def bench_tuxpaint(args: argparse.Namespace) -> dict[str, Any]:
    log = lambda s: print(s, flush=True)  # noqa: E731
    work = Path(args.workdir) / "tuxpaint"
    recipe_file = recipe_path("multimodal/tuxpaint_cpu")
    ours = list(args.overrides)
    test = tuxpaint("test")
    res: dict[str, Any] = {"benchmark": "tuxpaint", "budget_s": args.budget, "test_stamps": len(test),
                           "test_stamps_with_sound": sum(s["audio"] is not None for s in test), "runs": {}}
    torch.manual_seed(args.seed)
    res["random"] = evaluate_tuxpaint(MMJepaModel(load_recipe(recipe_file, ours).model_config()), test)
    for tag, overrides in (("ours", ours), ("contrastive", CONTRASTIVE + ours)):
        model, info = _train_for(recipe_file, overrides, args.budget, work, tag, log)
        res["runs"][tag] = {**info, "overrides": overrides, **evaluate_tuxpaint(model, test)}
        log(f"[{tag}] " + ", ".join(f"{k} {v:.3f}" for k, v in res["runs"][tag].items()
                                    if isinstance(v, float) and "_r" in k and "predicted" not in k))
    o, c = res["runs"]["ours"], res["runs"]["contrastive"]
    for key in ("image_to_text_r1", "text_to_image_r1", "image_to_text_r5", "text_to_image_r5", "image_to_text_r10",
                "text_to_image_r10", "audio_to_text_r1", "text_to_audio_r1", "audio_to_text_r5", "text_to_audio_r5"):
        res[key] = o[key]
        res[f"contrastive_{key}"] = c[key]
    res["chance_image_text_r1"] = 1 / len(test)
    res["chance_audio_text_r1"] = 1 / max(1, res["test_stamps_with_sound"])
    return res


# ============================================================================ tux paint: span filling
# the recipe's objectives plus a readout of the captions trained with and without the other modalities
SPAN_READOUT = "model.objectives.readout={modality: text, context: both}"
SPAN_DRAWS = 20  # span masks per test caption
SPAN_BOOTSTRAP = 2000


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A fixed permutation (n,) with no fixed point (one cycle through a seeded order), n >= 2."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-1)
    return out


def conditioned_span_eval(model: MMJepaModel, items: list[dict[str, Any]], condition_on: Sequence[str] = ("image",),
                          draws: int = SPAN_DRAWS, seed: int = 0, tokenizer: Any = None,
                          bootstrap: int = SPAN_BOOTSTRAP) -> dict[str, Any]:
    """Masked-token top-1 / top-5 of the captions (``text``) of ``items``: alone (``without_<m>``),
    with each modality ``m`` of ``condition_on`` of the same item (``with_<m>``) and with another
    item's (``wrong_<m>``, a fixed derangement), on the same ``draws`` span masks per caption; paired
    bootstrap intervals over captions of the differences (``<m>_gain``: with minus without).
    ``tokenizer``: the text processor's (default: the one the model's options name)."""
    text_cfg = model.config.modality_config("text")
    text_proc = get_modality("text").build_processor(text_cfg, tokenizer=tokenizer)
    enc = text_proc([s["text"] for s in items])
    ids, att = enc["input_ids"], enc["attention_mask"].bool()  # (N, L)
    special = torch.tensor(sorted(text_proc.tokenizer.all_special_ids), dtype=ids.dtype)
    maskable = att & ~torch.isin(ids, special)  # (N, L): the caption's own tokens
    sampler = get_modality("text").build_mask_sampler(text_cfg)
    masks = sequence_span_masks(maskable, sampler, draws, seed)  # (N, draws, L)
    wrong = derangement(len(items), seed)
    conditions: dict[str, dict[str, Any]] = {"without": {}}
    for m in condition_on:
        mod = get_modality(m)
        x = mod.build_processor(model.config.modality_config(m))([s[m] for s in items])  # model inputs, N rows
        conditions[f"with_{m}"] = dict(x)
        conditions[f"wrong_{m}"] = {k: v[wrong] for k, v in x.items()}
    hits = conditioned_hits(model, ids, att, masks, conditions, exclude=special.tolist())  # name -> (N, 3)
    kept = masks.flatten(1).any(1)  # (N,) captions with >= 2 maskable tokens
    counts = hits["without"][kept, 2]
    res: dict[str, Any] = {"captions": int(kept.sum()), "captions_skipped": int((~kept).sum()),
                           "skipped_because": "fewer than 2 caption tokens besides the special ones",
                           "masks_per_caption": draws, "masked_tokens": int(counts.sum()),
                           "mask_ratio": sampler.mask_ratio, "mean_span": sampler.mean_span,
                           "masked": "caption tokens only (special tokens stay visible and are never predicted, "
                                     "as fill_spans_text drops them)",
                           "wrong": "another item's input, a fixed derangement"}
    acc = {name: {k: float(h[kept, j].sum() / counts.sum()) for j, k in ((0, "top1"), (1, "top5"))}
           for name, h in hits.items()}
    for m in condition_on:
        for j, k in ((0, "top1"), (1, "top5")):
            res[f"with_{m}_{k}"], res[f"without_{m}_{k}"] = acc[f"with_{m}"][k], acc["without"][k]
            res[f"wrong_{m}_{k}"] = acc[f"wrong_{m}"][k]
            for tag, (a, b) in ((f"{m}_gain", (f"with_{m}", "without")),
                                (f"own_vs_wrong_{m}", (f"with_{m}", f"wrong_{m}")),
                                (f"wrong_{m}_gain", (f"wrong_{m}", "without"))):
                res[f"{tag}_{k}"] = acc[a][k] - acc[b][k]
                res[f"{tag}_{k}_ci95"] = list(paired_bootstrap(hits[a][kept, j], hits[b][kept, j], counts,
                                                                bootstrap, seed))
        gain = hits[f"with_{m}"][kept, 0] - hits["without"][kept, 0]
        res[f"per_caption_{m}_gain_top1_positive"] = int((gain > 0).sum())
        res[f"per_caption_{m}_gain_top1_negative"] = int((gain < 0).sum())
    return res


def _bench_spans(args: argparse.Namespace, name: str, recipe: str, items: list[dict[str, Any]],
                 condition_on: Sequence[str]) -> dict[str, Any]:
    """Train ``recipe`` plus the conditioned readout (``--budget`` seconds or ``--steps``), then
    :func:`conditioned_span_eval` on ``items``."""
    overrides = [SPAN_READOUT, *args.overrides]
    torch.manual_seed(args.seed)
    model, info = _train_for(recipe_path(recipe), overrides, args.budget, Path(args.workdir) / name, "ours",
                             lambda s: print(s, flush=True), steps=args.steps)
    t0 = time.perf_counter()
    ev = conditioned_span_eval(model, items, condition_on, seed=args.seed)
    res: dict[str, Any] = {"benchmark": name, "budget_s": args.budget, "overrides": overrides,
                           "objectives": model.config.objectives, "test_items": len(items), **info, **ev,
                           "eval_s": time.perf_counter() - t0}
    print(f"[{name}] top-1 alone {res['without_' + condition_on[0] + '_top1']:.3f}; " + "; ".join(
        f"with the {m} {res[f'with_{m}_top1']:.3f} (another's {res[f'wrong_{m}_top1']:.3f}, gain "
        f"{res[f'{m}_gain_top1']:+.3f}, 95% CI {res[f'{m}_gain_top1_ci95']})" for m in condition_on), flush=True)
    return res


def bench_tuxpaint_spans(args: argparse.Namespace) -> dict[str, Any]:
    """Tux Paint captions filled alone, with their stamp's image and with another stamp's."""
    return _bench_spans(args, "tuxpaint_spans", "multimodal/tuxpaint_cpu", tuxpaint("test"), ("image",))


def bench_spoken_digits_spans(args: argparse.Namespace) -> dict[str, Any]:
    """The same question where the answer is certain to be in the other modalities: the spoken-digits
    recipe plus the conditioned readout; a caption ("the number seven") is filled alone, with the
    sample's digit image, with its spoken digit, and with another sample's of each."""
    return _bench_spans(args, "spoken_digits_spans", "multimodal/spoken_digits_cpu", spoken_digits("test"),
                        ("image", "audio"))
