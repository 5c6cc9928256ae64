"""Evaluation: linear probes on frozen embeddings (and the ``mmjepa eval`` command)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np
import torch

from .model import MMJepaModel
from .modalities import get_modality


@torch.no_grad()
def extract_features(model: MMJepaModel, samples: Sequence[dict[str, Any]], modality: str = "image",
                     batch_size: int = 256, use_target: bool = True, progress: bool = False) -> np.ndarray:
    """Mean-pooled (not normalised) encoder features of ``samples[i][modality]`` -> (n, D) float32.

    Each raw value goes through the modality's processor built from the model's config.
    """
    mod = get_modality(modality)
    processor = mod.build_processor(model.config.modality_config(modality))
    was_training = model.training
    model.eval()
    feats = []
    it = range(0, len(samples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"embedding {modality}", unit="batch")
    for start in it:
        chunk = [s[modality] for s in samples[start : start + batch_size]]
        batch = processor(chunk) if modality == "image" else _process_each(processor, chunk, mod)
        emb = model.embed(use_target=use_target, normalize=False, **batch)[modality]
        feats.append(emb.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(feats)


def _process_each(processor, values, mod) -> dict[str, Any]:
    items = [processor(v) for v in values]
    collate = getattr(mod, "collate", None)
    if collate is not None:
        return collate([{k: v[0] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in it.items()}
                        for it in items])
    return {k: torch.cat([it[k] for it in items]) for k in items[0]}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 C: float = 1.0, max_iter: int = 3000, seed: int = 0) -> float:
    """Accuracy of a multinomial logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == np.asarray(test_y)).mean())


def probe_dataset(model: MMJepaModel, dataset: str = "digits", modality: str = "image",
                  progress: bool = False) -> float:
    """Linear-probe accuracy of ``model``'s target encoder on a built-in labelled dataset."""
    from .datasets import load_builtin

    train, test = load_builtin(dataset, "train"), load_builtin(dataset, "test")
    fx = extract_features(model, train, modality, progress=progress)
    tx = extract_features(model, test, modality, progress=progress)
    return linear_probe(fx, np.array([s["label"] for s in train]), tx, np.array([s["label"] for s in test]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "spans":
        from .spans import main_spans

        return int(main_spans(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="mmjepa eval", description="Evaluate a trained mmjepa model.")
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("probe", help="linear probe on frozen target-encoder features of a built-in labelled dataset")
    p.add_argument("--model", required=True, help="a folder written by save_pretrained (or a Hub id)")
    p.add_argument("--data", default="digits", help="built-in dataset name (default: digits)")
    p.add_argument("--modality", default="image")
    p.add_argument("--json", help="write the result to this JSON file")
    sub.add_parser("spans", help="masked-span prediction accuracy (see `mmjepa eval spans --help`)")
    args = parser.parse_args(argv)
    model = MMJepaModel.from_pretrained(args.model)
    acc = probe_dataset(model, args.data, args.modality, progress=True)
    result = {"task": "probe", "data": args.data, "modality": args.modality, "accuracy": acc}
    print(f"linear probe accuracy on {args.data} ({args.modality}): {acc:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
