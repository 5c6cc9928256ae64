"""Optimizer and schedules: AdamW without weight decay on norms, biases and learned tokens; LR
warm-up + cosine; cosine weight-decay schedule (I-JEPA: 0.04 -> 0.4)."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names

# never decayed: biases, LayerNorms (by type, as transformers' Trainer does) and learned tokens
NO_DECAY_NAMES = ["bias", "mask_token", "mask_embed", "modality_embed",
                  "cls_token", "distillation_token", "register_tokens"]  # (those of Hugging Face backbones)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights decayed; biases, LayerNorms and learned tokens not decayed."""
    decayed = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_NAMES))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if name in decayed else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]


def build_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.04,
                    betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernel where the device supports it)."""
    kwargs = {}
    if fused is None:
        fused = True
    if fused:
        kwargs["fused"] = True
    try:
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **kwargs)
    except (RuntimeError, TypeError):  # fused unsupported for this device/dtype
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, start: float, peak: float,
                       final: float) -> float:
    """Linear warm-up ``start -> peak`` over ``warmup_steps``, then cosine ``peak -> final``."""
    if step < warmup_steps:
        return start + (peak - start) * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine ramp ``start -> end`` over ``total_steps`` (the I-JEPA weight-decay schedule)."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_hyperparams(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Write the scheduled LR into every group and the scheduled weight decay into decayed groups."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_wd", True):
            group["weight_decay"] = weight_decay
