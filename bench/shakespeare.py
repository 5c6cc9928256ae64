"""Masked-span prediction on Tiny Shakespeare: mmjepa against tuned masked-language models at equal
wall-clock.

``mmjepa bench quality shakespeare --seeds 0,1 --json PATH``
    mmjepa (``recipes/text/shakespeare_cpu.yaml``: JEPA + masked-token readout) trains through the
    real trainer; a ``ModernBertForMaskedLM`` and a ``BertForMaskedLM`` of the closest trainable-
    parameter count train *interleaved* with it, on the very batches and span masks of its data
    pipeline, each until its own clock catches up with mmjepa's after every mmjepa step; the
    unigram-frequency ranking is the floor. Scored on the held-out last 10% of the text.

``mmjepa bench quality shakespeare --sweep --models modernbert,bert --steps 500 --json PATH``
    The baselines' own learning-rate / warm-up sweep: each (lr, warm-up) trains alone for
    ``--steps`` steps and is scored on a *validation* part of the training text (never on the test
    text); the best pair per model becomes its default here.

``--eval-split validation`` trains on the first 90% of the training text and scores on its last
10% (for ablations of mmjepa's options, so that choosing them does not look at the test text).

Design decisions:

- The same data for everyone: every model reads batches from its own copy of the recipe's
  ``DataPipeline`` with the same seed, so the tokens and span masks of step *k* are the same.
- Equal wall-clock by interleaving, not by separate timed runs: both clocks advance under the same
  machine load, so a busy machine slows every model alike.
- Each baseline is set up as its authors would today: AdamW, betas (0.9, 0.98), weight decay 0.01
  on weights only, linear warm-up over a share of its steps then cosine to zero, gradient clipping
  1.0, no dropout, and its own learning rate and warm-up picked by the sweep. Its LR schedule is
  fitted to the number of steps it will take in the budget (measured after 20 steps).
- ModernBERT is matched by depth at mmjepa's width (GLU intermediate = 2 x width, global attention
  in every layer: the sequences are 128 tokens, ModernBERT's local window); BERT likewise (post-LN,
  intermediate 4 x width); both tie their decoder to the token embeddings.
- Held-out: one token stream cut into ``max_length`` chunks and one fixed set of span masks, the
  same for every model and seed; training seeds vary the batches, the masks and the weights; the
  JSON's top-level numbers are the means over seeds (``*_std``: the sample standard deviation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

from mmjepa.data import DataPipeline, DataStream
from mmjepa.datasets import shakespeare_text
from mmjepa.engine import load_recipe, train
from mmjepa.engine.optim import build_optimizer, cosine_with_warmup, set_hyperparams
from mmjepa.eval.spans import chunk_ids, masked_token_accuracy, mmjepa_predictor, span_masks
from mmjepa.modalities import get_modality
from mmjepa.models import MMJepaModel
from mmjepa.plot import line_plot
from mmjepa.recipes import recipe_path
from mmjepa.tokenizer import train_tokenizer

RECIPE = "text/shakespeare_cpu"
VALIDATION = 0.1  # share of the training text held out by --eval-split validation
BASELINES = ("modernbert", "bert")
MODELS = ("mmjepa",) + BASELINES
# each baseline's peak learning rate and warm-up share, picked by its sweep (BENCHMARKS.md)
DEFAULT_LR = {"modernbert": 5e-4, "bert": 3e-4}
DEFAULT_WARMUP = {"modernbert": 0.1, "bert": 0.1}
WEIGHT_DECAY, BETAS, CLIP = 0.01, (0.9, 0.98), 1.0
CURVE_EVERY = 50  # steps between the points of a baseline's learning curve


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- baselines
def _closest_depth(make: Callable[[int], Any], model_class: type, target: int) -> Any:
    """The config ``make(depth)`` whose model's trainable-parameter count is closest to ``target``."""
    best = None
    for depth in range(1, 33):
        cfg = make(depth)
        with torch.device("meta"):
            n = trainable(model_class(cfg))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (cfg, n)
    return best[0]


def bert_matching(target_params: int, vocab: int, hidden: int, heads: int, max_len: int) -> BertConfig:
    """The post-LN BERT of width ``hidden`` (intermediate 4 x hidden, no dropout) whose depth gives
    the trainable-parameter count closest to ``target_params``."""
    return _closest_depth(lambda depth: BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max_len, type_vocab_size=1, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), BertForMaskedLM, target_params)


def modernbert_matching(target_params: int, vocab: int, hidden: int, heads: int, max_len: int,
                        special: dict[str, int] | None = None) -> ModernBertConfig:
    """The ModernBERT (pre-norm, RoPE, GLU with intermediate 2 x hidden, global attention in every
    layer, no dropout) of width ``hidden`` whose depth gives the trainable-parameter count closest
    to ``target_params``. ``special``: pad/bos/eos/cls/sep ids of the tokenizer."""
    ids = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2, "sep_token_id": 3,
           **(special or {})}
    return _closest_depth(lambda depth: ModernBertConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=depth,
        num_attention_heads=heads, max_position_embeddings=max_len, layer_types=["full_attention"] * depth,
        attention_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0, **ids), ModernBertForMaskedLM, target_params)


MODEL_CLASSES = {"modernbert": ModernBertForMaskedLM, "bert": BertForMaskedLM}
MATCHING = {"modernbert": modernbert_matching, "bert": bert_matching}


def mlm_inputs(batch: dict[str, Any], mask_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated mmjepa batch -> MLM (input_ids with [MASK] on the span targets, attention_mask, labels)."""
    ids = batch["input_ids"]  # (B, L)
    ms = batch["masks"]["text"]
    tgt = ms["target"].flatten(1)  # (B, M*Kt)
    tv = ms.get("target_valid")
    tv = torch.ones_like(tgt, dtype=torch.bool) if tv is None else tv.flatten(1)
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked.scatter_(1, tgt, tv)
    labels = ids.masked_fill(~masked, -100)
    valid = batch.get("input_ids_valid")
    att = torch.ones_like(ids) if valid is None else valid.long()
    return ids.masked_fill(masked, mask_id), att, labels


def masked_lm_loss(model: torch.nn.Module, ids: torch.Tensor, att: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The MLM cross-entropy with the vocabulary head run on the masked positions only (ModernBERT's
    ``sparse_prediction``, done alike for both baselines): the same loss as ``model(..., labels=).loss``
    without the (B, L, V) logits of the unmasked tokens."""
    if isinstance(model, ModernBertForMaskedLM):
        h = model.model(input_ids=ids, attention_mask=att).last_hidden_state  # (B, L, D)
        head = lambda x: model.decoder(model.head(x))  # noqa: E731
    else:
        h = model.bert(input_ids=ids, attention_mask=att).last_hidden_state
        head = model.cls
    keep = labels != -100  # (B, L)
    return F.cross_entropy(head(h[keep]).float(), labels[keep])  # over (n_masked, V)


@dataclass
class Schedule:
    """Peak learning rate and warm-up share of one baseline."""

    lr: float
    warmup: float

    def lr_at(self, step: int, total: int) -> float:
        return cosine_with_warmup(step, total, int(round(self.warmup * total)), 0.0, self.lr, 0.0)


class MLMRun:
    """A Hugging Face masked-LM trained on the recipe's data stream (the same batches and span masks
    as mmjepa's run) with its own schedule; its clock counts only its own work (set-up included)."""

    def __init__(self, name: str, config: Any, recipe: Any, mask_id: int, schedule: Schedule, total_steps: int):
        t0 = time.perf_counter()
        torch.manual_seed(recipe.train.seed)
        self.name, self.mask_id, self.schedule, self.total = name, mask_id, schedule, total_steps
        # on the device mmjepa's trainer picks (accelerate: the GPU when there is one)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = MODEL_CLASSES[name](config).to(self.device).train()
        self.opt = build_optimizer(self.model, lr=schedule.lr, weight_decay=WEIGHT_DECAY, betas=BETAS)
        self.stream = DataStream(DataPipeline(recipe.data, recipe.model_config()))
        self.step, self.losses, self.curve = 0, [], []
        self.elapsed = time.perf_counter() - t0

    def train_step(self) -> None:
        t0 = time.perf_counter()
        set_hyperparams(self.opt, self.schedule.lr_at(self.step, self.total), WEIGHT_DECAY)
        ids, att, labels = (t.to(self.device) for t in mlm_inputs(next(self.stream), self.mask_id))
        loss = masked_lm_loss(self.model, ids, att, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        self.step += 1
        self.losses.append(float(loss.detach()))  # (waits for the device: the clock below is honest)
        self.elapsed += time.perf_counter() - t0
        if self.step % CURVE_EVERY == 0:
            self.curve.append({"step": self.step, "loss": sum(self.losses[-CURVE_EVERY:]) / CURVE_EVERY,
                               "elapsed_s": self.elapsed})

    def catch_up(self, budget_s: float, lead_step: int, lead_total: int) -> None:
        """Train until this run's clock reaches ``budget_s`` (the leader's time after its step
        ``lead_step`` of ``lead_total``); after 20 steps, fit the LR schedule to the steps this run
        will take over the leader's whole run."""
        while self.elapsed < budget_s:
            self.train_step()
            if self.step == 20 and lead_step:
                lead_per_step = budget_s / lead_step
                self.total = max(21, int(lead_total * lead_per_step / (self.elapsed / 20)))

    def close(self) -> torch.nn.Module:
        self.stream.close()
        return self.model.eval()


# ----------------------------------------------------------------------------- evaluation
@dataclass
class HeldOut:
    """Chunks (n, L) of an evaluation text and one fixed set of span masks (n, L)."""

    chunks: torch.Tensor
    masks: torch.Tensor


def held_out(tokenizer: Any, text: str, cfg: Any, seed: int) -> HeldOut:
    """``text`` cut into ``max_length`` chunks, masked by the text plug-in's span sampler with ``seed``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = chunk_ids(ids, cfg.max_length)
    sampler = get_modality("text").build_mask_sampler(cfg)
    return HeldOut(chunks, span_masks(len(chunks), cfg.max_length, sampler, seed=seed))


def mlm_predictor(model: torch.nn.Module, mask_id: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    dev = next(model.parameters()).device

    @torch.no_grad()
    def predict(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        m = m.to(dev)
        return model(input_ids=ids.to(dev).masked_fill(m, mask_id)).logits[m]  # (n_masked, V)

    return predict


def unigram_counts(tokenizer: Any, text: str, vocab: int) -> tuple[torch.Tensor, float]:
    """Token counts (V,) of ``text`` and the entropy (nats) of their distribution."""
    counts = torch.bincount(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]),
                            minlength=vocab).float()
    p = counts / counts.sum()
    return counts, float(-(p[p > 0] * p[p > 0].log()).sum())


# ----------------------------------------------------------------------------- one seed
@dataclass
class Setup:
    """What every seed shares: the work folder, tokenizer, overrides, evaluation set and the unigram floor."""

    work: Path
    tokenizer: Any
    overrides: list[str]
    evalset: HeldOut
    unigram: dict[str, float]
    unigram_entropy: float


def _setup(args: argparse.Namespace) -> Setup:
    work = Path(args.workdir) / "shakespeare"
    work.mkdir(parents=True, exist_ok=True)
    validation = VALIDATION if args.eval_split == "validation" else 0.0
    train_text = shakespeare_text("train", validation=validation)
    eval_text = shakespeare_text(args.eval_split, validation=validation)
    (work / "train.txt").write_text(train_text, encoding="utf-8")
    base = load_recipe(recipe_path(RECIPE), list(args.overrides))
    text_cfg = base.model_config().modality_config("text")
    tok = train_tokenizer([work / "train.txt"], vocab_size=text_cfg.vocab_size, model_type="unigram")
    tok.save_pretrained(work / "tokenizer")
    # data.num_workers=0: every model loads its batches in this process, inside its own time
    overrides = [f"model.modalities.text.tokenizer={work / 'tokenizer'}", "train.resume=never", "train.progress=false",
                 "train.tracker=none", "data.num_workers=0"]
    if validation:
        overrides.append("data.sources=[{type: builtin, name: shakespeare, split: train, "
                         f"options: {{validation: {validation}}}}}]")
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    evalset = held_out(tok, eval_text, text_cfg, args.seed)
    counts, entropy = unigram_counts(tok, train_text, text_cfg.vocab_size)
    unigram = masked_token_accuracy(lambda ids, m: counts.expand(int(m.sum()), -1), evalset.chunks, evalset.masks)
    return Setup(work, tok, overrides + list(args.overrides), evalset, unigram, entropy)


def _recipe(setup: Setup, seed: int, tag: str) -> Any:
    return load_recipe(recipe_path(RECIPE), setup.overrides + [
        f"data.seed={seed}", f"train.seed={seed}", f"train.output_dir={setup.work / f'{tag}_seed{seed}'}"])


def _baseline_config(name: str, recipe: Any, tok: Any) -> Any:
    cfg = recipe.model_config()
    text = cfg.modality_config("text")
    with torch.device("meta"):
        n = trainable(MMJepaModel(cfg))
    args = (n, text.vocab_size, cfg.hidden_size, cfg.num_attention_heads, text.max_length)
    if name == "modernbert":
        special = {k: getattr(tok, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
        special.update(cls_token_id=special["bos_token_id"], sep_token_id=special["eos_token_id"])
        return modernbert_matching(*args, special=special)
    return bert_matching(*args)


def _score(setup: Setup, predict: Callable) -> dict[str, float]:
    return masked_token_accuracy(predict, setup.evalset.chunks, setup.evalset.masks)


def run_seed(setup: Setup, seed: int, models: list[str], schedules: dict[str, Schedule]) -> dict[str, Any]:
    """mmjepa trains through the trainer; every baseline catches up with its clock after each step."""
    recipe = _recipe(setup, seed, "mmjepa")
    mask_id = setup.tokenizer.mask_token_id
    names = [m for m in models if m != "mmjepa"]
    configs = {m: _baseline_config(m, recipe, setup.tokenizer) for m in names}
    runs: dict[str, MLMRun] = {}
    clock = {"mmjepa": 0.0, "mark": time.perf_counter()}
    curve: list[dict[str, float]] = []

    def interleave(step: int, logs: dict | None) -> None:
        clock["mmjepa"] += time.perf_counter() - clock["mark"]  # mmjepa's time since the baselines last stopped
        if logs and "loss/readout/text" in logs:
            curve.append({"step": step, "loss": float(logs["loss/readout/text"]), "elapsed_s": clock["mmjepa"]})
        for m in names:
            if m not in runs:
                runs[m] = MLMRun(m, configs[m], recipe, mask_id, schedules[m], recipe.train.max_steps)
            runs[m].catch_up(clock["mmjepa"], step, recipe.train.max_steps)
        clock["mark"] = time.perf_counter()

    print(f"[shakespeare seed {seed}] mmjepa for {recipe.train.max_steps} steps"
          + (f", interleaved with {', '.join(names)} for the same wall-clock" if names else "") + " ...", flush=True)
    result = train(recipe, callbacks=[interleave])
    model = result.model.eval()
    out: dict[str, Any] = {"seed": seed, "mmjepa": {
        **_score(setup, mmjepa_predictor(model)), "steps": result.steps, "train_s": clock["mmjepa"],
        "params": trainable(model), "lr": recipe.optim.lr, "curve": curve,
        "final_logs": result.history[-1] if result.history else None}}
    for m in names:
        run = runs[m]
        net = run.close()
        out[m] = {**_score(setup, mlm_predictor(net, mask_id)), "steps": run.step, "train_s": run.elapsed,
                  "params": trainable(net), "layers": configs[m].num_hidden_layers, "lr": run.schedule.lr,
                  "warmup": run.schedule.warmup, "schedule_steps": run.total, "curve": run.curve}
    print(f"[shakespeare seed {seed}] " + ", ".join(f"{m} top-1 {out[m]['top1']:.4f} top-5 {out[m]['top5']:.4f}"
                                                     for m in models), flush=True)
    return out


# ----------------------------------------------------------------------------- sweep
def run_sweep(setup: Setup, args: argparse.Namespace, models: list[str]) -> dict[str, Any]:
    """Each baseline alone, ``--steps`` steps per (lr, warm-up, seed), scored on the evaluation split."""
    if not args.steps:
        raise ValueError("--sweep needs --steps (the steps of every sweep run)")
    lrs = [float(x) for x in args.sweep_lrs.split(",")]
    warmups = [float(x) for x in args.sweep_warmups.split(",")]
    rows = []
    for m in models:
        for lr in lrs:
            for warmup in warmups:
                for seed in args.seed_list:
                    recipe = _recipe(setup, seed, f"sweep_{m}")
                    cfg = _baseline_config(m, recipe, setup.tokenizer)
                    run = MLMRun(m, cfg, recipe, setup.tokenizer.mask_token_id, Schedule(lr, warmup), args.steps)
                    while run.step < args.steps:
                        run.train_step()
                    net = run.close()
                    row = {"model": m, "lr": lr, "warmup": warmup, "seed": seed,
                           **_score(setup, mlm_predictor(net, setup.tokenizer.mask_token_id)),
                           "final_train_loss": run.curve[-1]["loss"] if run.curve else None,
                           "train_s": run.elapsed, "steps": run.step, "params": trainable(net)}
                    rows.append(row)
                    print(f"[sweep] {m} lr {lr:g} warm-up {warmup:g} seed {seed}: top-1 {row['top1']:.4f} "
                          f"top-5 {row['top5']:.4f} train loss {row['final_train_loss']}", flush=True)
    return {"sweep": rows, "best": pick_best(rows, setup.unigram["top1"])}


def pick_best(rows: list[dict[str, Any]], unigram_top1: float) -> dict[str, dict[str, Any]]:
    """Each model's (lr, warm-up) from sweep rows: the highest mean evaluation top-1 (then top-5)
    among the settings that beat the unigram ranking; when none does (top-1 cannot tell settings on
    the plateau apart), the lowest mean final training loss, the setting closest to leaving it."""
    best = {}
    for m in dict.fromkeys(r["model"] for r in rows):
        groups: dict[tuple, list] = {}
        for r in rows:
            if r["model"] == m:
                groups.setdefault((r["lr"], r["warmup"]), []).append(r)
        mean = {k: {f: statistics.mean(r[f] for r in g) for f in ("top1", "top5")} for k, g in groups.items()}
        loss = {k: statistics.mean(r["final_train_loss"] for r in g if r["final_train_loss"] is not None)
                if any(r["final_train_loss"] is not None for r in g) else float("inf") for k, g in groups.items()}
        above = [k for k in groups if mean[k]["top1"] > unigram_top1]
        if above:
            key, rule = max(above, key=lambda k: (mean[k]["top1"], mean[k]["top5"])), "best mean top-1 above unigram"
        else:
            key, rule = min(groups, key=lambda k: loss[k]), "none above unigram: lowest mean training loss"
        best[m] = {"lr": key[0], "warmup": key[1], **mean[key], "final_train_loss": loss[key], "rule": rule,
                   "runs": len(groups[key])}
    return best


# ----------------------------------------------------------------------------- summary
def summarize(per_seed: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of each model's top-1 / top-5."""
    out: dict[str, Any] = {}
    for m in models:
        for k in ("top1", "top5"):
            vals = [s[m][k] for s in per_seed]
            out[f"{m}_{k}"] = statistics.mean(vals)
            out[f"{m}_{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[f"{m}_{k}_per_seed"] = vals
        out[f"{m}_train_s"] = statistics.mean(s[m]["train_s"] for s in per_seed)
        out[f"{m}_steps"] = statistics.mean(s[m]["steps"] for s in per_seed)
    if "mmjepa" in models:
        for m in models:
            if m != "mmjepa":
                out[f"mmjepa_beats_{m}_every_seed"] = all(
                    s["mmjepa"]["top1"] >= s[m]["top1"] and s["mmjepa"]["top5"] >= s[m]["top5"] for s in per_seed)
    return out


LABELS = {"mmjepa": "mmjepa (JEPA + readout)", "modernbert": "ModernBERT MLM", "bert": "BERT MLM"}


def plot_curves(per_seed: list[dict[str, Any]], models: list[str], unigram_entropy: float, path: Path) -> Path:
    """Training masked-token cross-entropy against each model's own training time, every seed -> PNG."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for s in per_seed:
        for m in models:
            c = s[m]["curve"]
            series[f"{LABELS[m]}, seed {s['seed']}"] = ([p["elapsed_s"] for p in c], [p["loss"] for p in c])
    ends = [x for xs, _ in series.values() for x in xs]
    if ends:
        series["unigram entropy (train)"] = ([0.0, max(ends)], [unigram_entropy, unigram_entropy])
    return line_plot({k: v for k, v in series.items() if v[0]}, path,
                     title="Tiny Shakespeare: masked-token cross-entropy at equal wall-clock",
                     xlabel="training time (s)", ylabel="cross-entropy (nats)", size=(8.0, 4.8))


def bench_shakespeare(args: argparse.Namespace) -> dict[str, Any]:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    setup = _setup(args)
    res: dict[str, Any] = {"benchmark": "shakespeare", "eval_split": args.eval_split, "models": models,
                           "unigram_top1": setup.unigram["top1"], "unigram_top5": setup.unigram["top5"],
                           "held_out_chunks": len(setup.evalset.chunks),
                           "held_out_masked_tokens": setup.unigram["num_masked"],
                           "unigram_entropy": setup.unigram_entropy, "seeds": args.seed_list}
    if args.sweep:
        if "mmjepa" in models:
            raise ValueError("--sweep tunes the baselines: pass --models modernbert,bert")
        return {**res, **run_sweep(setup, args, models)}
    if models[0] != "mmjepa":
        raise ValueError("the comparison is timed against mmjepa's run: --models must start with mmjepa")
    schedules = {m: Schedule(args.baseline_lr.get(m, DEFAULT_LR[m]), args.baseline_warmup.get(m, DEFAULT_WARMUP[m]))
                 for m in BASELINES}
    per_seed = [run_seed(setup, seed, models, schedules) for seed in args.seed_list]
    plot = plot_curves(per_seed, models, setup.unigram_entropy, setup.work / "curves.png")
    return {**res, **summarize(per_seed, models), "per_seed": per_seed, "plot": str(plot),
            "torch_threads": torch.get_num_threads()}


def merge(paths: list[str], out_dir: Path) -> dict[str, Any]:
    """Several runs' JSON (e.g. one seed each, run side by side) -> one summary over all their seeds."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    models = runs[0]["models"]
    for r in runs[1:]:
        if r["models"] != models or r["eval_split"] != runs[0]["eval_split"] or \
                r["held_out_masked_tokens"] != runs[0]["held_out_masked_tokens"]:
            raise ValueError("--merge: the runs differ in models, evaluation split or held-out set")
    per_seed = [s for r in runs for s in r["per_seed"]]
    plot = plot_curves(per_seed, models, runs[0]["unigram_entropy"], out_dir / "curves.png")
    keep = {k: runs[0][k] for k in ("benchmark", "eval_split", "models", "unigram_top1", "unigram_top5",
                                    "held_out_chunks", "held_out_masked_tokens", "unigram_entropy")}
    return {**keep, "seeds": [s["seed"] for s in per_seed], **summarize(per_seed, models), "per_seed": per_seed,
            "plot": str(plot), "merged_from": [r.get("command") for r in runs]}


def parse_pairs(items: list[str], flag: str) -> dict[str, float]:
    """``NAME=VALUE`` items -> {NAME: float}, NAME one of the baselines."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in BASELINES:
            raise ValueError(f"{flag} takes NAME=VALUE with NAME one of {', '.join(BASELINES)}, got {item!r}")
        out[name] = float(value)
    return out
