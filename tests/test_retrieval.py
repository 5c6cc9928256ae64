"""Retrieval metrics (CLIP_benchmark semantics) on hand-made similarity matrices, the k-NN
classifier and the linear probe on separable features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmjepa.eval.probe import linear_probe
from mmjepa.eval.retrieval import (class_positives, knn_accuracy, positive_ranks, recall_at_k,
                                   retrieval_both_ways)


def test_any_positive_in_the_top_k_is_a_hit():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0],    # positive {2}: ranked 3rd
                           [0.1, 0.9, 0.8, 0.7],    # positives {0, 3}: the best one (3) ranks 3rd
                           [0.5, 0.1, 0.2, 0.3]])   # positive {0}: first
    positives = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert positive_ranks(scores, positives).tolist() == [3, 3, 1]
    r = recall_at_k(scores, positives, ks=(1, 2, 3))
    assert r == {"r1": pytest.approx(1 / 3), "r2": pytest.approx(1 / 3), "r3": 1.0,
                 "mean_rank": pytest.approx(7 / 3), "median_rank": 3.0}


def test_ties_count_against_the_query():
    scores = torch.zeros(2, 5)  # a constant scorer
    positives = torch.eye(2, 5, dtype=torch.bool)
    assert positive_ranks(scores, positives).tolist() == [5, 5]
    assert recall_at_k(scores, positives, ks=(1,))["r1"] == 0.0
    # a tie between two positives is no loss
    assert positive_ranks(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[True, True, False]])).tolist() == [1]


def test_class_match_retrieval_both_ways():
    labels_a, labels_b = [0, 1, 2, 0], [2, 0, 1]
    pos = class_positives(labels_a, labels_b)
    assert pos.tolist() == [[False, True, False], [False, False, True], [True, False, False], [False, True, False]]
    a = torch.eye(3)[[0, 1, 2, 0]]  # perfect embeddings: class c -> basis vector c
    b = torch.eye(3)[[2, 0, 1]]
    res = retrieval_both_ways(a, b, pos)
    assert res["a_to_b"]["r1"] == res["b_to_a"]["r1"] == 1.0
    res = retrieval_both_ways(a, b.roll(1, dims=1), pos)  # every class sent to another
    assert res["a_to_b"]["r1"] == 0.0 and res["a_to_b"]["r5"] == 1.0


def test_a_query_without_positives_is_an_error():
    with pytest.raises(ValueError, match="at least one positive"):
        recall_at_k(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]))


def test_probes_reach_100_percent_on_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    y = np.repeat(np.arange(4), 30)
    x = centres[y] + rng.normal(size=(120, 16))
    assert linear_probe(x[::2], y[::2], x[1::2], y[1::2]) == 1.0
    assert knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) == 1.0
    assert knn_accuracy(x[::2], y[::2], rng.normal(size=(60, 16)), y[1::2], k=5) < 0.6  # noise is not separable
