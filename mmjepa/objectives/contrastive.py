"""Contrastive alignment of the pooled embeddings of paired modalities (InfoNCE as CLIP, or SigLIP).

Each modality's embedding is the mean of its context-encoder latents over every real token
(``view: full``, the default) or over the visible tokens of its intra-modal mask (``view: masked``,
FLIP's augmentation: on short budgets it learns far more slowly, the pooled mean of a random
subset of tokens varying more with the subset than with the content), centred on the batch (as
``model.embed`` centres on the running mean) and L2-normalised. For every pair of modalities a sample holds
together, matching samples are positives and every other sample of the pair is a negative —
gathered from every process (with gradients), so the negatives grow with the global batch.
Terms ``contrastive/<a>-<b>``; the temperature is learned (CLIP's log-parametrised scale) unless
``learn_temperature: false``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .base import (VIEWS, LatentView, Objective, ObjectiveConfig, ObjectiveOutput, check_choice, pooled_context,
                   register_objective)


@dataclass
class ContrastiveConfig(ObjectiveConfig):
    """``kind``: ``infonce`` (softmax over the batch, both directions) or ``siglip`` (a sigmoid per
    pair); ``temperature``: initial; ``bias``: SigLIP's initial logit bias; ``view``: the context
    encoder on every token (``full``) or on the intra-modal context only (``masked``, FLIP's)."""

    kind: str = "infonce"
    temperature: float = 0.07
    learn_temperature: bool = True
    bias: float = -10.0
    view: str = "full"

    def __post_init__(self):
        super().__post_init__()
        check_choice("kind", self.kind, ("infonce", "siglip"))
        check_choice("view", self.view, VIEWS)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of ``x`` from every process (this one's keep their gradient) and this process's offset;
    processes may hold different numbers of rows (padded to the largest, then cut)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = F.pad(x, (0, 0, 0, max(sizes) - x.shape[0]))
    parts = dist.nn.functional.all_gather(padded)
    rank = dist.get_rank()
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:rank])


@register_objective
class Contrastive(Objective):
    name = "contrastive"
    config_class = ContrastiveConfig

    def __init__(self, cfg: ContrastiveConfig, model_config: Any):
        super().__init__(cfg, model_config)
        scale = torch.tensor(math.log(1.0 / cfg.temperature))
        self.logit_scale = nn.Parameter(scale) if cfg.learn_temperature else None
        self.register_buffer("fixed_scale", scale, persistent=False)
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.bias))) if cfg.kind == "siglip" else None

    def init_parameters(self, std: float) -> None:
        # transformers' init functions leave tensors loaded from a checkpoint alone
        if self.logit_scale is not None:
            init.constant_(self.logit_scale, math.log(1.0 / self.cfg.temperature))
        if self.logit_bias is not None:
            init.constant_(self.logit_bias, float(self.cfg.bias))

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (n, D) unit rows of matching samples -> the loss against every process's other rows."""
        all_b, offset = gather_with_grad(b)
        all_a, _ = gather_with_grad(a)
        scale = (self.logit_scale if self.logit_scale is not None else self.fixed_scale).exp().clamp(max=100.0)
        logits_ab = scale * a @ all_b.T  # (n, N)
        logits_ba = scale * b @ all_a.T
        labels = torch.arange(a.shape[0], device=a.device) + offset
        if self.cfg.kind == "infonce":
            return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
        sign = -torch.ones_like(logits_ab)
        sign[torch.arange(a.shape[0]), labels] = 1.0
        return -F.logsigmoid(sign * (logits_ab + self.logit_bias)).sum(1).mean()

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        emb = {}
        for m in view.masks:
            e = pooled_context(view, m, self.cfg.view == "full")  # (Bm, D)
            emb[m] = F.normalize(e - e.mean(0, keepdim=True), dim=-1)
        terms = {}
        for a, b in combinations(list(view.masks), 2):
            ra, rb = view.rows(a, view.present[b]), view.rows(b, view.present[b])
            both = ra >= 0
            if int(both.sum()) < 2:
                continue
            terms[f"contrastive/{a}-{b}"] = self.pair_loss(emb[a][ra[both]], emb[b][rb[both]])
        if not terms:
            return None
        scale = self.logit_scale if self.logit_scale is not None else self.fixed_scale
        return ObjectiveOutput(torch.stack(list(terms.values())).mean(), terms,
                               {"contrastive/temperature": (-scale.detach()).exp()})
