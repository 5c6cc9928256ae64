"""Retrieval metrics on embeddings, with CLIP_benchmark semantics, and a k-NN classifier.

A query is a hit at K when ANY of its positives is among its K best-scored gallery items (several
positives per query: five captions per image, or every item of the same class). Ranks are 1-based
ranks of a query's best-ranked positive; ties are broken against the query (an item scored equal
to the best positive counts as ranked above it), so a constant scorer never looks good.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """scores (Q, G), positives (Q, G) bool -> (Q,) 1-based rank of each query's best positive.

    The rank of a positive is 1 + the number of gallery items scored strictly higher, + the
    number of non-positives scored exactly as high (ties count against the query)."""
    if scores.shape != positives.shape or scores.dim() != 2:
        raise ValueError(f"scores and positives must both be (Q, G), got {tuple(scores.shape)} and "
                         f"{tuple(positives.shape)}")
    positives = positives.bool()
    if not positives.any(1).all():
        raise ValueError("every query needs at least one positive in the gallery")
    scores = scores.float()
    best = scores.masked_fill(~positives, float("-inf")).max(1).values  # (Q,) best positive's score
    higher = (scores > best[:, None]).sum(1)
    tied = ((scores == best[:, None]) & ~positives).sum(1)
    return higher + tied + 1


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (a hit when any positive is in the top K), mean and median rank of the best positive."""
    ranks = positive_ranks(scores, positives)
    out = {f"r{k}": float((ranks <= k).float().mean()) for k in ks}
    out["mean_rank"] = float(ranks.float().mean())
    out["median_rank"] = float(ranks.float().median())
    return out


def class_positives(query_labels: Sequence[int] | torch.Tensor, gallery_labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """(Q, G) bool: gallery items of the query's class (class-match retrieval)."""
    q, g = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    return q[:, None] == g[None, :]


def retrieval_both_ways(a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor,
                        ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Cosine-similarity retrieval a->b and b->a for embeddings a (Na, D), b (Nb, D) and
    positives (Na, Nb): {"a_to_b": {...}, "b_to_a": {...}}."""
    a, b = torch.nn.functional.normalize(a.float(), dim=-1), torch.nn.functional.normalize(b.float(), dim=-1)
    sim = a @ b.T
    return {"a_to_b": recall_at_k(sim, positives, ks), "b_to_a": recall_at_k(sim.T, positives.T, ks)}


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = 20) -> float:
    """Accuracy of a cosine k-nearest-neighbour vote (weighted by similarity) on frozen features."""
    tr = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=-1)
    te = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=-1)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    k = min(k, len(tr))
    sim, idx = (te @ tr.T).topk(k, dim=1)  # (n, k)
    votes = torch.zeros(len(te), int(ty.max()) + 1).scatter_add_(1, ty[idx], sim.clamp_min(0) + 1e-6)
    return float((votes.argmax(1).numpy() == np.asarray(test_y)).mean())
