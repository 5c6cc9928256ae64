"""The ``mmjepa`` command line: ``mmjepa <command> [args]`` (also ``python -m mmjepa``).

Every command's arguments are defined and parsed here, before anything heavy is imported: this
module is apart from the ``mmjepa`` package, whose import loads torch and registers the model with
transformers, so ``--help`` and argument errors answer at once. A command then imports its
implementation and calls it with the parsed arguments. Expected failures (a bad recipe, a missing
file, bad data, Ctrl-C) end with one line on stderr; set ``MMJEPA_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _version() -> str:
    try:
        return version("mmjepa")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "unknown"


# ----------------------------------------------------------------------------- argument definitions
def _subcommands(p: argparse.ArgumentParser, dest: str) -> Callable[..., argparse.ArgumentParser]:
    """Sub-commands of ``p`` stored under ``dest``; returns ``add(name, help=...) -> parser``. The
    children are kept on ``p.children`` so that :func:`parse` can walk down to the leaf command."""
    sub = p.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    p.children, p.child_dest = {}, dest

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        p.children[name] = sub.add_parser(name, **kwargs)
        return p.children[name]

    return add


def _shards(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", choices=["folder", "csv", "jsonl", "hf"], help="kind of input")
    p.add_argument("input", help="folder / manifest file / dataset name or folder")
    p.add_argument("output", help="output folder for the shards and manifest.json")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    p.add_argument("--max-count", type=int, default=10000, help="samples per shard (default 10000)")
    p.add_argument("--max-size", type=float, default=1e9, help="bytes per shard (default 1e9)")
    p.add_argument("--split", default="train", help="hf: the split (default train)")
    p.add_argument("--config", default=None, help="hf: the dataset configuration")
    p.add_argument("--text-lines", choices=["all", "first"], default="all",
                   help="keep all lines of a text, or only the first (e.g. Tux Paint: English first)")
    p.add_argument("--text-columns", default="text,caption,sentence,transcription",
                   help="csv/jsonl/hf: comma list of columns whose strings are a sample's text (a txt field)")
    p.add_argument("--require", default="", help="comma list of modalities every sample must have (e.g. image,text)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s [-h] [--print] RECIPE [KEY=VALUE ...]"
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="optional overrides of recipe entries, e.g. train.max_steps=50 model.hidden_size=64")
    p.add_argument("--print", action="store_true", help="print the resolved recipe and exit")


def _eval(p: argparse.ArgumentParser) -> None:
    add = _subcommands(p, "task")
    pr = add("probe", help="linear probe on frozen target-encoder features of a built-in labelled dataset")
    pr.add_argument("--model", required=True, help="a folder written by save_pretrained (or a Hub id)")
    pr.add_argument("--data", default="digits", help="built-in dataset name (default: digits)")
    pr.add_argument("--modality", default=None, help="the modality to probe (default: the model's only one)")
    pr.add_argument("--json", help="write the result to this JSON file")
    rt = add("retrieval", help="cross-modal retrieval recall@K both ways on a paired or labelled set")
    rt.add_argument("data", metavar="DATA", help="a folder, shards, a .csv/.jsonl manifest, or builtin:NAME[:SPLIT]")
    rt.add_argument("--model", required=True, help="a folder written by save_pretrained (or a Hub id)")
    rt.add_argument("--modalities", default=None, help="comma list (default: every modality of the model)")
    rt.add_argument("--positives", choices=("auto", "item", "class"), default="auto",
                    help="item: an item's own other modalities; class: every item of its class; auto (default): "
                         "class when every item has a label")
    rt.add_argument("--ks", default="1,5,10", help="comma list of K (default 1,5,10)")
    rt.add_argument("--no-predicted", action="store_true", help="skip scoring by predicted embeddings")
    rt.add_argument("--json", help="write the result to this JSON file")
    _items(rt, "DATA")
    zs = add("zeroshot", help="zero-shot classification of images or audio from text prompts")
    zs.add_argument("data", metavar="DATA", help="labelled items: a folder, shards, a manifest, or builtin:NAME[:SPLIT]")
    zs.add_argument("--model", required=True, help="a folder written by save_pretrained (or a Hub id)")
    zs.add_argument("--modality", required=True, help="the modality to classify (image, audio ...)")
    zs.add_argument("--classes", required=True,
                    help="class names in label order: a comma list, or a file with one name per line")
    zs.add_argument("--templates", nargs="+", default=["{}"], metavar="TEMPLATE",
                    help="prompt templates with {} for the class name (default: the bare name)")
    zs.add_argument("--no-predicted", action="store_true", help="skip scoring by predicted embeddings")
    zs.add_argument("--json", help="write the result to this JSON file")
    _items(zs, "DATA")
    sp = add("spans", help="masked-span prediction accuracy on a text file")
    sp.add_argument("--model", required=True, help="a folder saved with save_pretrained (or a Hub id)")
    sp.add_argument("--text", required=True, help="plain-text file to evaluate on")
    sp.add_argument("--tokenizer", default=None,
                    help="tokenizer folder (default: the model folder, else the one its config names)")
    sp.add_argument("--mask-ratio", type=float, default=None, help="default: the model's mask_ratio")
    sp.add_argument("--max-chunks", type=int, default=None, help="evaluate on at most this many chunks")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", default=None, help="also write the result to this JSON file")


def _items(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--kind", choices=("auto", "folder", "shards", "manifest", "builtin"), default="auto",
                   help=f"what {what} is (default: auto, from the path)")
    p.add_argument("--text-lines", choices=("all", "first"), default="all",
                   help="keep all lines of a text file, or the first only (Tux Paint: the English caption)")
    p.add_argument("--text-columns", default="text,caption,sentence,transcription",
                   help="manifest: comma list of columns whose strings are an item's text")
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _faiss_options(p: argparse.ArgumentParser, build: bool) -> None:
    if build:
        p.add_argument("--m", type=int, default=None, help="hnsw: links per node (default 32)")
        p.add_argument("--nlist", type=int, default=None, help="ivf: inverted lists (default 4 sqrt(N))")
    p.add_argument("--ef-search", type=int, default=None, help="hnsw: search breadth (default 64)")
    p.add_argument("--nprobe", type=int, default=None, help="ivf: lists visited per query (default 16)")


def _embed(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s [-h] --model MODEL --output DIR (INPUT | --text STRING ...) [options]"
    p.add_argument("input", nargs="?", metavar="INPUT",
                   help="a folder (files sharing a stem form one item), WebDataset shards (a folder written by "
                        "`mmjepa shards`, .tar files or a brace pattern), a .csv/.jsonl manifest, or builtin:NAME[:SPLIT]")
    p.add_argument("--text", nargs="+", metavar="STRING", help="embed these strings instead of INPUT")
    p.add_argument("--model", required=True, help="a folder written by save_pretrained / training's export (or a Hub id)")
    p.add_argument("--output", required=True, metavar="DIR", help="the gallery folder to write")
    p.add_argument("--modalities", default=None, help="comma list of modalities to embed (default: all the model has)")
    p.add_argument("--backend", choices=("exact", "flat", "hnsw", "ivf"), default="exact",
                   help="exact search (default), or a faiss index for large galleries (pip install faiss-cpu)")
    p.add_argument("--online", action="store_true", help="embed with the context encoders instead of the EMA targets")
    _faiss_options(p, build=True)
    _items(p, "INPUT")


def _search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, metavar="DIR", help="a gallery folder written by `mmjepa embed`")
    p.add_argument("--text", nargs="+", metavar="STRING", help="text queries")
    p.add_argument("--image", nargs="+", metavar="PATH", help="image queries")
    p.add_argument("--audio", nargs="+", metavar="PATH", help="audio queries")
    p.add_argument("--target", default=None, help="the gallery modality to search (default: the gallery's only one)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--mode", choices=("embedding", "predicted"), default="embedding",
                   help="score by embedding similarity (default), or predict the target's embedding from the query")
    p.add_argument("--model", default=None, help="the model (default: the one that embedded the gallery)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _faiss_options(p, build=False)


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_DIR",
                   help="a folder written by save_pretrained / training's export (or a Hub id)")
    p.add_argument("--modality", required=True, metavar="NAME", help="the modality whose embedding tower to export")
    p.add_argument("--output", required=True, metavar="PATH", help="the file to write (.onnx, or .pt2 for torch)")
    p.add_argument("--format", choices=("onnx", "torch"), default="onnx",
                   help="onnx (default; needs pip install 'mmjepa[export]') or torch (a torch.export program)")
    p.add_argument("--use-context-encoder", action="store_true",
                   help="export the context encoder instead of the EMA target encoder (the default, as embed)")
    p.add_argument("--tokens", action="store_true", help="also output the token latents (last_hidden_state)")
    p.add_argument("--opset", type=int, default=None,
                   help="onnx: the ONNX opset (default 20; 18-22 for a modality with a padding mask)")


def _push(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_DIR", help="a folder written by save_pretrained / training's export")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, e.g. your-org/your-model (created if missing)")
    p.add_argument("--metrics", metavar="JSON", default=None,
                   help="evaluation results for the model card (default: metrics.json in the folder, if any)")
    p.add_argument("--license", default="apache-2.0", help="the model card's license field (default apache-2.0)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", default=None, help="a Hub token (default: the one `hf auth login` stored)")
    p.add_argument("--dry-run", action="store_true", help="write the model card and list what would be uploaded")


def _tokenizer(p: argparse.ArgumentParser) -> None:
    tr = _subcommands(p, "task")("train", help="train on text files and save as a transformers tokenizer")
    tr.add_argument("--input", nargs="+", required=True, metavar="FILE", help="plain-text training files")
    tr.add_argument("--vocab-size", type=int, default=8000)
    tr.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    tr.add_argument("--output", required=True, metavar="DIR", help="folder to save_pretrained into")
    tr.add_argument("--no-bos-eos", action="store_true", help="do not wrap encoded texts in <s> ... </s>")


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="demo_output", metavar="DIR",
                   help="where the model, metrics.json and demo_report.png go (default ./demo_output)")
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100: about 5 minutes on 2 cores)")
    p.add_argument("--image", action="store_true", help="the single-modality quickstart instead: I-JEPA on digit images")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="optional recipe overrides, e.g. data.batch_size=32")


def _bench(p: argparse.ArgumentParser) -> None:
    add = _subcommands(p, "bench")
    sp = add("speed", help="training/inference speed against lightly and transformers' IJepaModel")
    sp.add_argument("--json", help="write the results to this JSON file")
    sp.add_argument("--precision", default="fp32,bf16",
                    help="comma list of fp32,bf16 (bf16 is skipped on a CPU without native bf16 matmul)")
    sp.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported), >= 5 for the record")
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--steps", type=int, default=4, help="steps (distinct mask batches) per timed round")
    sp.add_argument("--threads", default="1,0",
                    help="comma list of torch thread counts, each measured in turn (0: torch's default; default 1,0)")
    sp.add_argument("--force-bf16", action="store_true",
                    help="time bf16 even on a CPU without native bf16 matmul (skipped there by default)")
    sp.add_argument("--masks", choices=("shared", "own"), default="shared",
                    help="shared: both training implementations use mmjepa's masks; own: lightly uses its collator")
    sp.add_argument("--compile", action="store_true", help="also time mmjepa under torch.compile (inductor)")
    sp.add_argument("--skip", default="", help="comma list of parts to skip: train,infer,memory,flops")
    sp.add_argument("--tiny", action="store_true", help="a tiny configuration (smoke test of the harness)")
    sp.add_argument("--peak-size", type=int, default=2048, help="n of the n x n x n matmul that measures the peak")
    sp.add_argument("--check-batches", type=int, default=64,
                    help="mask batches drawn from each collator to compare their token counts")
    for f in ("image_size", "patch_size", "width", "depth", "heads", "pred_width", "pred_depth", "pred_heads",
              "batch_size", "num_targets"):
        sp.add_argument(f"--{f.replace('_', '-')}", type=int, default=None, help="override the benchmark model")
    dp = add("data", help="input-pipeline throughput against training consumption")
    dp.add_argument("--recipe", default=None, help="recipe whose data and model are measured (default: the digits one)")
    dp.add_argument("--batches", type=int, default=20, help="batches per input-pipeline window")
    dp.add_argument("--steps", type=int, default=8, help="training steps per window")
    dp.add_argument("--repeats", type=int, default=3, help="windows (the median is reported)")
    dp.add_argument("--no-tuxpaint", action="store_true", help="skip the tuxpaint-shards measurement")
    dp.add_argument("--json", default=None, help="write the results here")
    dp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides (e.g. data.num_workers=4)")
    rp = add("retrieval", help="gallery search: exact vs faiss (flat, hnsw, ivf) recall@k and speed")
    rp.add_argument("--items", type=int, default=100_000, help="gallery size (default 100000)")
    rp.add_argument("--dim", type=int, default=256, help="embedding width (default 256)")
    rp.add_argument("--queries", type=int, default=1000, help="queries (default 1000)")
    rp.add_argument("--clusters", type=int, default=1000, help="clusters of the synthetic gallery (default 1000)")
    rp.add_argument("--spread", type=float, default=1.5, help="noise around the cluster centres (default 1.5)")
    rp.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    rp.add_argument("--batch", type=int, default=100, help="queries per batched call (default 100)")
    rp.add_argument("--single", type=int, default=200, help="queries timed one at a time (default 200)")
    rp.add_argument("--threads", type=int, default=1, help="threads for torch and faiss (default 1)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--json", default=None, help="write the results here")
    fp = add("faults", help="fault injection: kill -9, corrupt shards, NaN steps, a full disk, a dying rank")
    fp.add_argument("--json", default=None, help="write the results to this JSON file")
    fp.add_argument("--trials", type=int, default=10, help="kill -9 trials (default 10)")
    fp.add_argument("--quick", action="store_true",
                    help="a short run (one kill -9 trial, inside a checkpoint write; no 2-process case): < 2 min")
    fp.add_argument("--seed", type=int, default=0, help="seed of the kill moments and corrupt-sample positions")
    fp.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder, removed)")
    sc = add("scaling", help="mmjepa train samples/s: 1 process vs 2 gloo processes vs 1 process with 2 threads (CPU)")
    sc.add_argument("--json", default=None, help="write the results to this JSON file")
    sc.add_argument("--recipe", default=None, help="the recipe trained (default: the CPU digits one)")
    sc.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the 3 configurations (median reported)")
    sc.add_argument("--warmup", type=int, default=20, help="steps before the timed ones (a multiple of --log-every)")
    sc.add_argument("--steps", type=int, default=120, help="timed steps per run (a multiple of --log-every)")
    sc.add_argument("--log-every", type=int, default=20, help="train.log_every of the runs: the timed windows")
    sc.add_argument("--timeout", type=float, default=600.0, help="seconds a single run may take (default 600)")
    sc.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder, removed)")
    sc.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides (e.g. data.batch_size=32)")
    qp = add("quality", help="quality on real data: fsdd | shakespeare | spoken_digits | tuxpaint | *_spans")
    qp.add_argument("name", choices=("fsdd", "shakespeare", "spoken_digits", "tuxpaint", "tuxpaint_spans",
                                     "spoken_digits_spans"), metavar="NAME",
                    help="fsdd (audio probe) | shakespeare (span filling vs ModernBERT and BERT) | spoken_digits, tuxpaint "
                         "(tri-modal retrieval and probes vs contrastive) | tuxpaint_spans, spoken_digits_spans "
                         "(caption span filling with and without the image / sound)")
    qp.add_argument("--json", default=None, help="write the results to this JSON file")
    qp.add_argument("--workdir", default="runs/bench_quality", help="tokenizer, checkpoints, exports")
    qp.add_argument("--steps", type=int, default=None,
                    help="override train.max_steps of the recipe (*_spans: train that many steps instead of --budget; "
                         "shakespeare --sweep: the steps of every setting)")
    qp.add_argument("--seed", type=int, default=0, help="seed of the held-out masks / random encoder")
    qp.add_argument("--seeds", default="0", help="shakespeare: comma list of training seeds (default 0)")
    qp.add_argument("--models", default="mmjepa,modernbert,bert",
                    help="shakespeare: mmjepa first, then the baselines it is timed against (modernbert, bert)")
    qp.add_argument("--eval-split", default="test", choices=("test", "validation"),
                    help="shakespeare: score on the held-out test text (default) or on a validation part of "
                         "the training text (for sweeps and ablations; training then leaves it out)")
    qp.add_argument("--baseline-lr", action="append", metavar="NAME=LR",
                    help="shakespeare: a baseline's peak learning rate (default: its sweep's pick)")
    qp.add_argument("--baseline-warmup", action="append", metavar="NAME=SHARE",
                    help="shakespeare: a baseline's warm-up share of its steps (default: its sweep's pick)")
    qp.add_argument("--sweep", action="store_true",
                    help="shakespeare: sweep the baselines' lr x warm-up alone for --steps steps each")
    qp.add_argument("--sweep-lrs", default="3e-4,1e-3,3e-3", help="shakespeare --sweep: learning rates")
    qp.add_argument("--sweep-warmups", default="0.05", help="shakespeare --sweep: warm-up shares")
    qp.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="shakespeare: combine the JSON of runs made apart (e.g. one seed each) into one summary")
    qp.add_argument("--budget", type=float, default=300.0,
                    help="spoken_digits, tuxpaint: seconds of training per model (default 300)")
    qp.add_argument("--no-low-pair", action="store_true", help="spoken_digits: skip the low-pair regime")
    qp.add_argument("--ablation", action="store_true",
                    help="spoken_digits: also train the alignment options without contrastive negatives")
    qp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    tp = add("tta", help="time to accuracy: training seconds to a fixed frozen-probe accuracy, per training option")
    tp.add_argument("--json", default=None, help="write the results here (the plot goes beside it, .png)")
    tp.add_argument("--datasets", default="digits,fsdd", help="comma list of digits,fsdd (default both)")
    tp.add_argument("--options", default="reference,corners,crop,mask_sets,context_once,combined",
                    help="comma list of reference,corners,crop,mask_sets,context_once,combined (default all)")
    tp.add_argument("--budget", type=float, default=None,
                    help="training seconds per option before a run gives up (default 240; --quick: 20)")
    tp.add_argument("--eval-every", type=int, default=None, help="steps between probes (default 50)")
    tp.add_argument("--digits-target", type=float, default=0.90,
                    help="digits probe accuracy to reach (default 0.90: random init 0.869, the recipe 0.913)")
    tp.add_argument("--fsdd-target", type=float, default=0.975,
                    help="FSDD probe accuracy to reach (default 0.975: random init 0.960, the recipe 0.983)")
    tp.add_argument("--steps-factor", type=float, default=1.0,
                    help="train.max_steps of each recipe times this (the LR / EMA schedules follow; default 1)")
    tp.add_argument("--quick", action="store_true",
                    help="a smoke test of the harness: 4 steps, a small probe set (the numbers mean nothing)")
    tp.add_argument("--workdir", default="runs/bench_tta", help="the runs' output folders")
    tp.add_argument("--seed", type=int, default=0, help="torch's global seed (each run uses its recipe's seeds)")
    tp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run")


def _convert(p: argparse.ArgumentParser) -> None:
    add = _subcommands(p, "task")
    ij = add("ijepa", help="an I-JEPA checkpoint -> a trainable mmjepa image model folder",
             description="Convert an I-JEPA checkpoint into a complete mmjepa image model (save_pretrained). "
                         "An official .pth.tar (facebookresearch/ijepa) gives the context encoder, the EMA "
                         "target encoder and the predictor (read with torch.load(weights_only=True) only; the "
                         "optimizer state is not converted); a transformers IJepaModel holds the encoder only: "
                         "it becomes both encoders and the predictor is freshly initialised.")
    ij.add_argument("source", metavar="SOURCE",
                    help="an official I-JEPA .pth.tar, or a transformers IJepaModel folder or Hub id")
    ij.add_argument("--output", required=True, metavar="DIR", help="the mmjepa model folder to write")
    ij.add_argument("--num-heads", type=int, default=None,
                    help="official checkpoints: attention heads of the encoders and predictor (not in the "
                         "tensor shapes; default: the published value for the width, e.g. 16 for ViT-H)")
    ij.add_argument("--image-size", type=int, default=None,
                    help="input size of the converted model (default: the checkpoint's); the fixed sin-cos "
                         "position tables are computed for the new grid")
    ij.add_argument("--no-predictor", action="store_true",
                    help="official checkpoints: convert the encoders only and initialise a fresh predictor "
                         "(needed for ViT-g, whose predictor MLP ratio differs from its encoder's)")
    th = add("to-hf", help="an mmjepa image model folder -> a transformers IJepaModel folder")
    th.add_argument("model", metavar="MODEL_DIR", help="a folder written by save_pretrained (or a Hub id)")
    th.add_argument("--output", required=True, metavar="DIR", help="the IJepaModel folder to write")
    th.add_argument("--use-context-encoder", action="store_true",
                    help="export the context encoder instead of the EMA target encoder (the default)")


# command -> (help, define arguments, implementation "module:function" taking the parsed arguments)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {
    "shards": ("build WebDataset shards from a folder / CSV / JSONL / HF dataset", _shards, "mmjepa.shards:run"),
    "train": ("train from a recipe: mmjepa train RECIPE.yaml [KEY=VALUE ...]", _train, "mmjepa.engine.command:run"),
    "eval": ("evaluate a saved model: probe | retrieval | zeroshot | spans", _eval, "mmjepa.eval.command:run"),
    "embed": ("embed a folder / shards / manifest / strings into a searchable gallery", _embed,
              "mmjepa.retrieval.command:run_embed"),
    "search": ("search a gallery written by `mmjepa embed` with text, image or audio queries", _search,
               "mmjepa.retrieval.command:run_search"),
    "export": ("export a modality's embedding tower to ONNX or torch.export: export MODEL_DIR --modality NAME "
               "--output PATH", _export, "mmjepa.export:run"),
    "tokenizer": ("train a SentencePiece-style tokenizer: tokenizer train ...", _tokenizer, "mmjepa.tokenizer:run"),
    "demo": ("the tri-modal quickstart on spoken digits: train ~5 minutes on a CPU, retrieve, draw a report",
             _demo, "mmjepa.demo:run"),
    "bench": ("benchmarks: speed | data | retrieval | quality | faults | scaling | tta", _bench, "mmjepa.bench.cli:run"),
    "push": ("upload a model folder (weights, processor, model card) to the Hugging Face Hub: push MODEL_DIR "
             "REPO_ID", _push, "mmjepa.models.saving:run_push"),
    "convert": ("convert checkpoints: ijepa (official .pth.tar or IJepaModel -> mmjepa) | to-hf (mmjepa -> "
                "IJepaModel)", _convert, "mmjepa.convert_command:run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmjepa", description="Multimodal JEPA pretraining for image, text and audio.",
                                     epilog="`mmjepa <command> --help` shows a command's options.")
    parser.add_argument("-V", "--version", action="version", version=f"mmjepa {_version()}")
    add = _subcommands(parser, "command")
    for name, (help_, define, _) in COMMANDS.items():
        define(add(name, help=help_))
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse a command line: walk down the sub-commands, then parse the leaf command's arguments,
    where options and ``KEY=VALUE`` overrides may come in any order."""
    node, chosen, rest = build_parser(), {}, list(argv)
    while getattr(node, "children", None):
        if not rest or rest[0].startswith("-"):
            node.parse_args(rest)  # --help / --version / "required" errors: argparse prints and exits
            node.error(f"expected a {node.child_dest}")  # pragma: no cover - parse_args exits first
        name = rest.pop(0)
        if name not in node.children:
            node.error(f"unknown {node.child_dest} {name!r} (choose from {', '.join(node.children)})")
        chosen[node.child_dest] = name
        node = node.children[name]
    args = node.parse_intermixed_args(rest)
    for k, v in chosen.items():
        setattr(args, k, v)
    args.argv = list(argv)  # the command line as given, for records such as a benchmark's JSON
    command = node
    if args.command == "train" and args.recipe is None:
        command.error("missing RECIPE: the recipe YAML file to train (KEY=VALUE overrides after it are optional)")
    for item in getattr(args, "overrides", None) or []:
        if "=" not in item:
            command.error(f"{item!r} is not an override: overrides look like KEY=VALUE (e.g. train.max_steps=50)")
    return args


def _implementation(command: str) -> Callable[[argparse.Namespace], Any]:
    module, func = COMMANDS[command][2].split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_help()
        return 0
    args = parse(argv)
    prog = f"mmjepa {args.command}"
    if args.command == "train" and not Path(args.recipe).is_file():  # said before the seconds of imports
        print(f"{prog}: recipe not found: {args.recipe}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(_implementation(args.command)(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - expected failures are one line; the rest is re-raised
        kind = type(err).__name__
        if os.environ.get("MMJEPA_DEBUG") or kind not in ("ValueError", "FileNotFoundError", "DataError",
                                                             "TrainingInterrupted", "CollapseError",
                                                             "NonFiniteError", "CheckpointError"):
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED if kind == "TrainingInterrupted" else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
