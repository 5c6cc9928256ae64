"""EMA target encoders: a momentum schedule and a fused in-place update."""

from __future__ import annotations

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """I-JEPA's linear momentum schedule: ``start`` at step 0 -> ``end`` at ``total_steps``."""
    if total_steps <= 0:
        return end
    return start + (end - start) * min(step, total_steps) / total_steps


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, over all parameters, with ``_foreach``.

    Only floating-point parameters are averaged; buffers (fixed positions) are left alone.
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online modules have different parameter lists")
    if momentum >= 1.0:
        return
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
