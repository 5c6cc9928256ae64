"""Intra-modal latent prediction (I-JEPA's objective): predict the layer-normed EMA-target latents
of each modality's masked tokens from its visible tokens (optionally also from the context of the
sample's other modalities).

With several mask sets per sample (``MMJepaConfig.mask_sets``) the loss covers every set: the mean
over all sets' target tokens, each set predicted from its own context (data2vec 2.0's multi-mask
training; the EMA targets are computed once per sample)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import LatentView, Objective, ObjectiveConfig, ObjectiveOutput, register_objective

# smooth_l1 is I-JEPA's (beta 1), l1 V-JEPA's, l2 the mean squared error
LOSSES = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss, "l2": F.mse_loss}


def latent_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1",
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss (one of :data:`LOSSES`) between predictions and targets (both (..., D)), averaged
    over valid tokens (every token when ``valid`` is None)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose from {sorted(LOSSES)}")
    err = LOSSES[kind](pred, target, reduction="none" if valid is not None else "mean")
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


@dataclass
class IntraConfig(ObjectiveConfig):
    """``loss``: ``smooth_l1`` (I-JEPA), ``l1`` (V-JEPA) or ``l2``; ``context``: the predictor sees
    the modality's own context (``own``) or the context of every modality the sample holds (``all``)."""

    loss: str = "smooth_l1"
    context: str = "own"

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.context not in ("own", "all"):
            raise ValueError(f"context must be 'own' or 'all', got {self.context!r}")


@register_objective
class IntraModalPrediction(Objective):
    """The mean over masked modalities of the latent loss between predictions and targets; terms
    ``intra/<modality>``, monitors ``<modality>/pred_std`` and ``<modality>/target_std``."""

    name = "intra"
    config_class = IntraConfig

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        terms, metrics = {}, {}
        for m in view.masks:
            pred = view.predictions(m, self.cfg.context == "all", all_sets=True)  # (B*R*M, Kt, D)
            target, valid = view.targets(m, all_sets=True)  # (B*R*M, Kt, D), (B*R*M, Kt) or None
            terms[f"intra/{m}"] = latent_loss(pred, target, self.cfg.loss, valid)
            metrics.update({f"{m}/{k}": v for k, v in collapse_metrics(pred, target).items()})
        if not terms:
            return None
        return ObjectiveOutput(torch.stack(list(terms.values())).mean(), terms, metrics)
