"""Linear probes on frozen embeddings: feature extraction through each modality's processor and
probe pooling, and a standardised logistic regression (scikit-learn)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ..datasets import load_builtin
from ..modalities import get_modality
from ..models import MMJepaModel


@torch.no_grad()
def extract_features(model: MMJepaModel, samples: Sequence[dict[str, Any]], modality: str,
                     batch_size: int = 256, use_target: bool = True, pooling: str = "embed",
                     progress: bool = False) -> np.ndarray:
    """Frozen encoder features of ``samples[i][modality]`` (raw values, through the modality's
    processor built from the model's config) -> (n, F) float32.

    ``pooling``: ``"embed"`` (the plug-in's embedding pooling, not normalised; F = D) or
    ``"probe"`` (the plug-in's probe view, e.g. frequency-resolved for audio).
    """
    if pooling not in ("embed", "probe"):
        raise ValueError(f"pooling must be 'embed' or 'probe', got {pooling!r}")
    mod, cfg = get_modality(modality), model.config.modality_config(modality)
    processor = mod.build_processor(cfg)
    was_training = model.training
    model.eval()
    feats = []
    for start in tqdm(range(0, len(samples), batch_size), desc=f"embedding {modality}", unit="batch",
                      disable=not progress):
        batch = processor([s[modality] for s in samples[start : start + batch_size]])
        h = model.encode(use_target=use_target, **batch)[modality]  # (B, N, D)
        pool = mod.pool if pooling == "embed" else mod.probe_features
        feats.append(pool(h, mod.valid_tokens(batch), cfg).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(feats)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 C: float = 1.0, max_iter: int = 3000, seed: int = 0) -> float:
    """Accuracy of a multinomial logistic regression on standardised frozen features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == np.asarray(test_y)).mean())


def probe_dataset(model: MMJepaModel, dataset: str, modality: str, pooling: str = "embed",
                  progress: bool = False) -> float:
    """Linear-probe accuracy of ``model``'s target encoder on a built-in labelled dataset."""
    train, test = load_builtin(dataset, "train"), load_builtin(dataset, "test")
    fx = extract_features(model, train, modality, pooling=pooling, progress=progress)
    tx = extract_features(model, test, modality, pooling=pooling, progress=progress)
    return linear_probe(fx, np.array([s["label"] for s in train]), tx, np.array([s["label"] for s in test]))
