"""Quality benchmarks on real data, trained through the real trainer (``mmjepa.train``).

``mmjepa bench quality shakespeare --json PATH``
    Tiny Shakespeare, last 10% held out (split on a line boundary), a unigram tokenizer trained on
    the first 90%. mmjepa (recipes/text/shakespeare_cpu.yaml: JEPA + masked-token readout) against
    ``transformers.BertForMaskedLM`` with the closest trainable-parameter count, trained on the
    same batches (same tokens, same span masks, from the same data pipeline and seed) for the same
    wall-clock time, plus a unigram-frequency baseline. Masked-token top-1/top-5 on held-out
    chunks with one fixed set of span masks.

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
from transformers import BertConfig, BertForMaskedLM

from mmjepa.data import DataPipeline, DataStream
from mmjepa.datasets import fsdd, shakespeare_text
from mmjepa.engine import load_recipe, train
from mmjepa.engine.optim import build_optimizer, cosine, cosine_with_warmup, set_hyperparams
from mmjepa.eval.probe import linear_probe
from mmjepa.eval.spans import chunk_ids, masked_token_accuracy, mmjepa_predictor, span_masks
from mmjepa.masking import SpanMasking
from mmjepa.modalities import get_modality
from mmjepa.modalities.audio import AudioProcessor, compute_normalization_stats
from mmjepa.models import MMJepaModel
from mmjepa.plot import line_plot
from mmjepa.recipes import recipe_path
from mmjepa.tokenizer import train_tokenizer

from .multimodal import bench_spoken_digits, bench_tuxpaint


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ============================================================================ shakespeare
def bert_matching(target_params: int, vocab: int, hidden: int, heads: int, max_len: int):
    """The BertConfig of width ``hidden`` whose depth gives the parameter count closest to
    ``target_params`` (decoder tied to the embeddings, as BERT's)."""
    best = None
    for depth in range(1, 25):
        cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                         intermediate_size=4 * hidden, max_position_embeddings=max_len, type_vocab_size=1,
                         pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        with torch.device("meta"):
            n = _trainable(BertForMaskedLM(cfg))
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (cfg, n)
    return best[0]


def _bert_inputs(batch: dict[str, Any], mask_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated mmjepa batch -> BERT (input_ids with [MASK] on the span targets, attention_mask, labels)."""
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


class BertRun:
    """BertForMaskedLM trained on the recipe's data stream (the same batches and span masks as
    mmjepa's run: same pipeline, same seed) with the recipe's optimiser and LR schedule.

    It trains *interleaved* with mmjepa's trainer: after every mmjepa step (a trainer callback),
    BERT takes steps until its own training time catches up with mmjepa's, so both get the same
    wall-clock under the same machine load (the CPU may be shared with other jobs).
    """

    def __init__(self, recipe: Any, config: Any, mask_id: int, lr: float | None = None):
        self.t_start = time.perf_counter()
        torch.manual_seed(recipe.train.seed)
        self.recipe, self.mask_id = recipe, mask_id
        self.model = BertForMaskedLM(config).train()
        o = recipe.optim
        self.lr = o.lr if lr is None else lr  # peak lr; start/final lr scale with it
        self.opt = build_optimizer(self.model, lr=self.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        self.stream = DataStream(DataPipeline(recipe.data, recipe.model_config()))
        self.total = recipe.train.max_steps  # re-fitted to BERT's own speed after 20 steps
        self.step, self.losses, self.history = 0, [], []
        self.elapsed = time.perf_counter() - self.t_start  # BERT's own time, set-up included

    def train_step(self) -> None:
        t0 = time.perf_counter()
        o = self.recipe.optim
        k = self.lr / o.lr
        lr = cosine_with_warmup(self.step, self.total, o.warmup_steps, k * o.start_lr, self.lr, k * o.final_lr)
        set_hyperparams(self.opt, lr, cosine(self.step, self.total, o.weight_decay, o.final_weight_decay))
        ids, att, labels = _bert_inputs(next(self.stream), self.mask_id)
        loss = self.model(input_ids=ids, attention_mask=att, labels=labels).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad)
        self.opt.step()
        self.step += 1
        self.losses.append(float(loss.detach()))
        self.elapsed += time.perf_counter() - t0
        if self.step % 50 == 0:
            self.history.append({"step": self.step, "loss": sum(self.losses[-50:]) / 50, "elapsed_s": self.elapsed})

    def catch_up(self, budget_s: float, mmjepa_steps: int) -> None:
        """Train until BERT's time reaches ``budget_s``; after 20 BERT steps fit its LR schedule
        to the number of steps it will take over mmjepa's whole run."""
        while self.elapsed < budget_s:
            self.train_step()
            if self.step == 20 and mmjepa_steps:
                mmjepa_per_step = budget_s / mmjepa_steps
                self.total = max(21, int(self.recipe.train.max_steps * mmjepa_per_step / (self.elapsed / 20)))

    def close(self) -> None:
        self.stream.close()
        self.model.eval()


def bench_shakespeare(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) / "shakespeare"
    work.mkdir(parents=True, exist_ok=True)
    train_txt = work / "train.txt"
    train_txt.write_text(shakespeare_text("train"), encoding="utf-8")
    recipe = load_recipe(recipe_path("text/shakespeare_cpu"))
    vocab = recipe.model_config().modality_config("text").vocab_size
    tok = train_tokenizer([train_txt], vocab_size=vocab, model_type="unigram")
    tok.save_pretrained(work / "tokenizer")
    # data.num_workers=0: both models load their batches in this process, inside their own time
    overrides = [f"model.modalities.text.tokenizer={work / 'tokenizer'}", f"train.output_dir={work / 'mmjepa'}",
                 "train.resume=never", "train.progress=false", "train.tracker=none", "data.num_workers=0"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    recipe = load_recipe(recipe_path("text/shakespeare_cpu"), overrides + list(args.overrides))
    cfg = recipe.model_config()
    text = cfg.modality_config("text")

    # the BERT of the closest parameter count (mmjepa's trainable parameters: encoder, predictor, readout)
    with torch.device("meta"):
        n_mmjepa = _trainable(MMJepaModel(cfg))
    bert_cfg = bert_matching(n_mmjepa, vocab, cfg.hidden_size, cfg.num_attention_heads, text.max_length)
    print(f"[shakespeare] training mmjepa for {recipe.train.max_steps} steps, interleaved with a "
          f"{bert_cfg.num_hidden_layers}-layer BERT for the same wall-clock ...", flush=True)
    clock = {"mmjepa": 0.0, "mark": time.perf_counter()}
    bert_run: BertRun | None = None
    mmjepa_curve: list[dict[str, float]] = []

    def interleave(step: int, logs: dict | None) -> None:
        nonlocal bert_run
        clock["mmjepa"] += time.perf_counter() - clock["mark"]  # mmjepa's time since BERT last stopped
        if logs and "loss/readout/text" in logs:
            mmjepa_curve.append({"step": step, "loss": float(logs["loss/readout/text"]), "elapsed_s": clock["mmjepa"]})
        if bert_run is None:
            bert_run = BertRun(recipe, bert_cfg, tok.mask_token_id, args.bert_lr)
        bert_run.catch_up(clock["mmjepa"], step)
        clock["mark"] = time.perf_counter()

    result = train(recipe, callbacks=[interleave])
    bert_run.close()
    bert = bert_run.model
    model = result.model.eval()
    tok.save_pretrained(result.export_dir or work / "mmjepa")
    bert_run_info = {"steps": bert_run.step, "elapsed_s": bert_run.elapsed, "history": bert_run.history,
                     "scheduled_steps": bert_run.total}

    # held-out: the last 10%, one token stream cut into max_length chunks, one fixed set of span masks
    held = tok(shakespeare_text("test"), add_special_tokens=False)["input_ids"]
    chunks = chunk_ids(held, text.max_length)
    masks = span_masks(len(chunks), text.max_length,
                       SpanMasking(text.max_length, text.mask_ratio, text.mean_span, text.max_span), seed=args.seed)
    res_m = masked_token_accuracy(mmjepa_predictor(model), chunks, masks)

    @torch.no_grad()
    def bert_predict(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return bert(input_ids=ids.masked_fill(m, tok.mask_token_id)).logits[m]

    res_b = masked_token_accuracy(bert_predict, chunks, masks)
    train_ids = tok(shakespeare_text("train"), add_special_tokens=False)["input_ids"]
    counts = torch.bincount(torch.tensor(train_ids), minlength=vocab).float()

    def unigram_predict(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return counts.expand(int(m.sum()), -1)

    res_u = masked_token_accuracy(unigram_predict, chunks, masks)
    p = counts / counts.sum()
    unigram_entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    plot = _plot_curves(mmjepa_curve, bert_run_info["history"], unigram_entropy, work / "curves.png")
    return {
        "benchmark": "shakespeare",
        "mmjepa_top1": res_m["top1"], "mmjepa_top5": res_m["top5"],
        "bert_top1": res_b["top1"], "bert_top5": res_b["top5"],
        "unigram_top1": res_u["top1"], "unigram_top5": res_u["top5"],
        "held_out_chunks": len(chunks), "held_out_masked_tokens": res_m["num_masked"],
        "params": {"mmjepa_trainable": n_mmjepa, "mmjepa_with_ema_target": sum(p.numel() for p in model.parameters()),
                   "bert": _trainable(bert)},
        "bert_layers": bert_cfg.num_hidden_layers, "lr": {"mmjepa": recipe.optim.lr, "bert": bert_run.lr},
        "wall_clock_s": {"mmjepa": clock["mmjepa"], "bert": bert_run_info["elapsed_s"],
                         "mmjepa_trainer_elapsed_incl_final_save": result.elapsed_s},
        "steps": {"mmjepa": result.steps, "bert": bert_run_info["steps"],
                  "bert_lr_schedule_steps": bert_run_info["scheduled_steps"]},
        "batch_size": recipe.data.batch_size, "max_length": text.max_length, "vocab_size": vocab,
        "mask_ratio": text.mask_ratio, "mean_span": text.mean_span,
        "mmjepa_final_logs": result.history[-1] if result.history else None,
        "curves": {"mmjepa": mmjepa_curve, "bert": bert_run_info["history"], "unigram_entropy": unigram_entropy},
        "plot": str(plot),
        "torch_threads": torch.get_num_threads(),
    }


def _plot_curves(mmjepa: list[dict], bert: list[dict], unigram_entropy: float, path: Path) -> Path:
    """Training masked-token cross-entropy against each model's own training time -> PNG."""
    series = {"mmjepa (JEPA + readout)": ([c["elapsed_s"] for c in mmjepa], [c["loss"] for c in mmjepa]),
              "BERT MLM": ([c["elapsed_s"] for c in bert], [c["loss"] for c in bert])}
    ends = [c["elapsed_s"] for c in mmjepa + bert]
    if ends:
        series["unigram entropy (train)"] = ([0.0, max(ends)], [unigram_entropy, unigram_entropy])
    return line_plot({k: v for k, v in series.items() if v[0]}, path,
                     title="Tiny Shakespeare: masked-token cross-entropy at equal wall-clock",
                     xlabel="training time (s)", ylabel="cross-entropy (nats)")


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
        "params_trainable": _trainable(result.model),
        "final_logs": result.history[-1] if result.history else None,
        "torch_threads": torch.get_num_threads(),
    }
    return res


BENCHES = {"shakespeare": bench_shakespeare, "fsdd": bench_fsdd, "spoken_digits": bench_spoken_digits,
           "tuxpaint": bench_tuxpaint}


def run(args: argparse.Namespace) -> int:
    """``mmjepa bench quality NAME`` with parsed arguments (see ``mmjepa_cli``)."""
    t0 = time.perf_counter()
    res = BENCHES[args.name](args)
    res["total_s"] = time.perf_counter() - t0
    res["command"] = "mmjepa " + " ".join(args.argv)
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0
