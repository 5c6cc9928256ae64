"""Latent prediction losses on layer-normed targets, and collapse monitors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1",
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss between predictions and targets (both (..., D)), averaged over valid tokens.

    ``smooth_l1`` is I-JEPA's (beta 1), ``l1`` V-JEPA's, ``l2`` the mean squared error.
    """
    if kind == "smooth_l1":
        err = F.smooth_l1_loss(pred, target, reduction="none" if valid is not None else "mean")
    elif kind == "l1":
        err = F.l1_loss(pred, target, reduction="none" if valid is not None else "mean")
    elif kind == "l2":
        err = F.mse_loss(pred, target, reduction="none" if valid is not None else "mean")
    else:
        raise ValueError(f"unknown loss {kind!r}")
    if valid is None:
        return err
    w = valid.unsqueeze(-1).to(err.dtype)
    return (err * w).sum() / (w.sum() * err.shape[-1]).clamp_min(1.0)


@torch.no_grad()
def collapse_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-dimension std of predictions and targets across tokens (data2vec-style collapse alarm):
    values near 0 mean every token maps to the same latent."""
    p = pred.detach().float().reshape(-1, pred.shape[-1])
    t = target.detach().float().reshape(-1, target.shape[-1])
    return {"pred_std": p.std(0).mean(), "target_std": t.std(0).mean()}
