"""SIGReg (LeJEPA, Balestriero & LeCun 2025): an anti-collapse regulariser that pushes the context
encoders' latents towards an isotropic standard Gaussian, with no negatives and no EMA needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmjepa.layers import masked_mean

from .base import LatentView, Objective, ObjectiveConfig, ObjectiveOutput, register_objective


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


@dataclass
class SigRegConfig(ObjectiveConfig):
    """``over``: ``samples`` (each sample's mean context token) or ``tokens`` (every real context
    token); ``num_slices``: random projections per step."""

    over: str = "samples"
    num_slices: int = 256

    def __post_init__(self):
        super().__post_init__()
        if self.over not in ("samples", "tokens"):
            raise ValueError(f"over must be 'samples' or 'tokens', got {self.over!r}")
        if self.num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {self.num_slices}")


def sigreg_inputs(z: torch.Tensor, valid: torch.Tensor | None, over: str) -> torch.Tensor:
    """Context latents (B, K, D) -> the rows SIGReg regularises: (B, D) sample means or (n, D) real tokens."""
    if over == "tokens":
        return z.reshape(-1, z.shape[-1]) if valid is None else z[valid]
    return masked_mean(z, valid)


@register_objective
class SigReg(Objective):
    """The mean over masked modalities of SIGReg on their context latents; terms ``sigreg/<modality>``."""

    name = "sigreg"
    config_class = SigRegConfig

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        terms = {}
        for m in view.masks:
            z, _, valid = view.context(m)
            terms[f"sigreg/{m}"] = sigreg(sigreg_inputs(z, valid, self.cfg.over), self.cfg.num_slices)
        if not terms:
            return None
        return ObjectiveOutput(torch.stack(list(terms.values())).mean(), terms)
