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


def sigreg(z: torch.Tensor, num_slices: int = 256, num_points: int = 17, t_max: float = 3.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """SIGReg (LeJEPA, Balestriero & LeCun 2025): push embeddings z (N, D) towards an isotropic
    standard Gaussian, the distribution that minimises downstream prediction risk.

    Projects z on ``num_slices`` random unit directions and, for each 1-D projection, compares its
    empirical characteristic function with the Gaussian's (Epps-Pulley statistic, integrated with a
    Gaussian weight over t in [0, t_max] by the trapezoid rule; the imaginary part of the target is
    0). Returns the mean statistic over slices, scaled by N as the test statistic is.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"sigreg needs (N >= 2, D) embeddings, got {tuple(z.shape)}")
    z = z.float()
    dirs = torch.randn(z.shape[1], num_slices, generator=generator, device=z.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # (D, S) unit columns
    x = z @ dirs  # (N, S)
    t = torch.linspace(0.0, t_max, num_points, device=z.device)  # (P,)
    xt = x.unsqueeze(-1) * t  # (N, S, P)
    gauss = torch.exp(-0.5 * t**2)  # characteristic function of N(0, 1) and the weight
    err = (xt.cos().mean(0) - gauss) ** 2 + xt.sin().mean(0) ** 2  # (S, P)
    stat = torch.trapezoid(err * gauss, t, dim=-1)  # (S,)
    return stat.mean() * z.shape[0]
