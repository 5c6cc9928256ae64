"""Cross-modal latent prediction: infer a modality's latents from the other modalities of the sample.

- ``cross``: per sample holding two or more modalities, one target modality is drawn (weights
  ``probs``) and hidden from the predictor's context; the predictor predicts the layer-normed EMA
  target latents of all its tokens (``hide: all``) or of its masked blocks (``hide: blocks``) from
  the context latents of the sample's other modalities. Terms ``cross/<context>-><target>``, e.g.
  ``cross/audio->image`` or ``cross/audio+text->image``.
- ``pooled``: one learned "global" query per target modality (the same token, tagged with the
  modality's embedding) predicts the target's embedding — the mean of its EMA target latents over
  real tokens minus the modality's running centre, as ``model.embed`` computes it — from the other
  modalities' context; the loss is ``2 - 2 cos`` (the squared distance of the two unit vectors). Terms
  ``pooled/<context>-><target>``. Its query also serves retrieval by prediction
  (``MMJepaModel.predict_embedding``, VL-JEPA style).

The context modalities are seen whole (``view: full``, the default: the context encoder on every
token, shared with the contrastive objective) or through their intra-modal masks (``view: masked``). Samples are grouped by (context modalities, target) so that every
predictor call sees complete contexts; a term averages its group's samples and the objective's
loss averages every sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..layers import gather_tokens
from .base import VIEWS, LatentView, Objective, ObjectiveConfig, ObjectiveOutput, check_choice, register_objective
from .intra import LOSSES, latent_loss


def context_groups(view: LatentView, samples: torch.Tensor, target: str) -> Iterator[tuple[list[str], torch.Tensor]]:
    """The samples of ``samples`` grouped by which other modalities they hold -> (modalities, samples)."""
    others = [m for m in view.masks if m != target]
    if not others or not len(samples):
        return
    have = torch.stack([view.rows(m, samples) >= 0 for m in others], 1)  # (R, n_others)
    codes = (have.long() * (2 ** torch.arange(len(others), device=have.device))).sum(1)
    for code in sorted(set(codes.tolist())):
        if code == 0:
            continue
        mods = [m for j, m in enumerate(others) if code >> j & 1]
        yield mods, samples[codes == code]


@dataclass
class PooledConfig(ObjectiveConfig):
    """``view``: the other modalities seen whole (``full``) or through their masks (``masked``)."""

    view: str = "full"

    def __post_init__(self):
        super().__post_init__()
        check_choice("view", self.view, VIEWS)


@dataclass
class CrossConfig(ObjectiveConfig):
    """``probs``: target modality -> weight of drawing it (missing ones weigh 1); ``hide``: ``all``
    (predict every token of the hidden modality) or ``blocks`` (its masked target blocks);
    ``loss``: as the intra objective's; ``view``: the other modalities seen whole or masked."""

    probs: dict[str, float] = field(default_factory=dict)
    hide: str = "all"
    loss: str = "smooth_l1"
    view: str = "full"

    def __post_init__(self):
        super().__post_init__()
        check_choice("view", self.view, VIEWS)
        check_choice("hide", self.hide, ("all", "blocks"))
        check_choice("loss", self.loss, tuple(sorted(LOSSES)))
        if any(not p >= 0 for p in self.probs.values()) or (self.probs and not sum(self.probs.values()) > 0):
            raise ValueError(f"probs must be >= 0 and not all 0, got {self.probs}")


@register_objective
class CrossModalPrediction(Objective):
    name = "cross"
    config_class = CrossConfig

    @classmethod
    def validate(cls, cfg: CrossConfig, model_config: Any) -> None:
        unknown = sorted(set(cfg.probs) - set(model_config.modalities))
        if unknown:
            raise ValueError(f"cross: probs names {unknown}, which the model does not have")

    def draw_targets(self, view: LatentView) -> dict[str, torch.Tensor]:
        """Per sample that holds >= 2 modalities, the hidden one: {target: its samples}."""
        mods = list(view.masks)
        B = view.batch_size
        dev = view.present[mods[0]].device
        have = torch.stack([view.rows(m, torch.arange(B, device=dev)) >= 0 for m in mods], 1)  # (B, n)
        eligible = have.sum(1) >= 2
        if not eligible.any():
            return {}
        w = torch.tensor([float(self.cfg.probs.get(m, 1.0)) for m in mods], device=dev) * have
        w = w[eligible]
        ok = w.sum(1) > 0
        choice = torch.multinomial(w[ok], 1).squeeze(1)  # the global RNG: checkpointed, so resume is exact
        samples = eligible.nonzero().squeeze(1)[ok]
        return {m: samples[choice == j] for j, m in enumerate(mods) if (choice == j).any()}

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        if len(view.masks) < 2:
            return None
        D = view.config.hidden_size
        terms, total, count = {}, 0.0, 0
        for target, samples in self.draw_targets(view).items():
            for context_mods, group in context_groups(view, samples, target):
                rows = view.rows(target, group)
                h = F.layer_norm(view.target_latents(target)[rows], (D,))  # (R, N, D), no gradient
                valid = view.valid(target)
                valid = None if valid is None else valid[rows]  # (R, N)
                R, N = h.shape[:2]
                if self.cfg.hide == "all":
                    tidx = torch.arange(N, device=h.device).expand(R, 1, N)  # (R, 1, N)
                    tvalid = None if valid is None else valid[:, None]
                else:
                    tidx = view.masks[target]["target"][rows]  # (R, M, Kt)
                    tv = view.masks[target].get("target_valid")
                    tvalid = None if tv is None else tv[rows]
                M, K = tidx.shape[1:]
                y = gather_tokens(h, tidx.reshape(R, M * K)).reshape(R * M, K, D)
                contexts = [(m, *view.aligned_context(m, group, self.cfg.view == "full")) for m in context_mods]
                pred = view.predictor(contexts, target, tidx, tvalid)  # (R*M, K, D)
                loss = latent_loss(pred, y, self.cfg.loss, None if tvalid is None else tvalid.reshape(R * M, K))
                terms[f"cross/{'+'.join(context_mods)}->{target}"] = loss
                total, count = total + loss * R, count + R
        if not count:
            return None
        return ObjectiveOutput(total / count, terms)


@register_objective
class PooledPrediction(Objective):
    """See the module docstring; owns the global query token."""

    name = "pooled"
    config_class = PooledConfig

    def __init__(self, cfg: PooledConfig, model_config: Any):
        super().__init__(cfg, model_config)
        self.query = nn.Parameter(torch.zeros(1, 1, model_config.predictor_hidden_size))

    def init_parameters(self, std: float) -> None:
        init.trunc_normal_(self.query, std=std)  # transformers' init: leaves a loaded tensor alone

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        if len(view.masks) < 2:
            return None
        terms, total, count = {}, 0.0, 0
        for target in view.masks:
            for context_mods, group in context_groups(view, view.present[target], target):
                rows = view.rows(target, group)
                y = view.pooled_target(target)[rows] - view.center(target)  # (R, D), no gradient
                contexts = [(m, *view.aligned_context(m, group, self.cfg.view == "full")) for m in context_mods]
                pred = view.predictor.predict_pooled(contexts, target, self.query)  # (R, D)
                loss = (2 - 2 * F.cosine_similarity(pred, y.detach(), dim=-1)).mean()
                terms[f"pooled/{'+'.join(context_mods)}->{target}"] = loss
                total, count = total + loss * len(group), count + len(group)
        if not count:
            return None
        return ObjectiveOutput(total / count, terms)
