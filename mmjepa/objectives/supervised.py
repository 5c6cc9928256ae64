"""Supervised classification of each modality's pooled embedding (cross-entropy on the batch's
``label``): the upper bound the self-supervised objectives are measured against, or an auxiliary
term when labels exist. With ``shared_head`` (default) every modality uses one linear classifier,
so the classes point the same way in every modality and the embeddings align across them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import (VIEWS, LatentView, Objective, ObjectiveConfig, ObjectiveOutput, check_choice, pooled_context,
                   register_objective)


@dataclass
class SupervisedConfig(ObjectiveConfig):
    """``view``: the context encoder on every token (``full``) or on the intra-modal context (``masked``)."""

    num_classes: int = 0
    shared_head: bool = True
    view: str = "full"

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        check_choice("view", self.view, VIEWS)


@register_objective
class Supervised(Objective):
    """Terms ``supervised/<modality>``, monitors ``<modality>/train_acc``."""

    name = "supervised"
    config_class = SupervisedConfig

    def __init__(self, cfg: SupervisedConfig, model_config: Any):
        super().__init__(cfg, model_config)
        heads = ["shared"] if cfg.shared_head else list(model_config.modalities)
        self.heads = nn.ModuleDict({h: nn.Linear(model_config.hidden_size, cfg.num_classes) for h in heads})

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        labels = view.batch.get("label")
        if not isinstance(labels, torch.Tensor):
            return None
        terms, metrics = {}, {}
        for m in view.masks:
            e = pooled_context(view, m, self.cfg.view == "full")
            logits = self.heads["shared" if self.cfg.shared_head else m](e)  # (Bm, C)
            y = labels.to(logits.device)[view.present[m]]
            terms[f"supervised/{m}"] = F.cross_entropy(logits, y)
            metrics[f"{m}/train_acc"] = (logits.argmax(-1) == y).float().mean().detach()
        return ObjectiveOutput(torch.stack(list(terms.values())).mean(), terms, metrics)
