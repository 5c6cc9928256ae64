"""Collapse monitors: signs that the embeddings stop carrying information, computed on every
training batch from the EMA target latents (no gradient).

- ``embed_std``: the standard deviation across the batch of the L2-normalised pooled embedding,
  averaged over dimensions (0 when every sample maps to the same embedding; about 1/sqrt(D) for
  embeddings spread evenly on the sphere);
- ``rankme``: RankMe (Garrido et al., 2023), the effective rank of the batch of pooled embeddings,
  centred (their common offset carries no information): exp of the entropy of the normalised
  singular values (1 = one direction or a single point, up to min(B - 1, D));
- ``target_var``: the variance of the target latents across tokens and samples, averaged over
  dimensions (data2vec 2.0 stops a run when it falls under a floor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..layers import masked_mean


@torch.no_grad()
def rankme(e: torch.Tensor, eps: float = 1e-7, center: bool = True) -> torch.Tensor:
    """Effective rank of the rows of ``e`` (n, D), centred by default; 1 for a single point."""
    e = e.float()
    c = e - e.mean(0, keepdim=True) if center else e
    if float(c.norm()) <= 1e-6 * (float(e.norm()) + 1e-12):
        return torch.tensor(1.0)
    s = torch.linalg.svdvals(c)
    p = s / (s.sum() + eps) + eps
    return torch.exp(-(p * p.log()).sum())


@torch.no_grad()
def collapse_monitors(view: Any) -> dict[str, torch.Tensor]:
    """``monitor/<modality>/{embed_std, rankme, target_var}`` for every modality of the batch
    with at least two samples."""
    out = {}
    for m in view.masks:
        h = view.target_latents(m)  # (Bm, N, D)
        if h.shape[0] < 2:
            continue
        valid = view.valid(m)
        e = masked_mean(h, valid).float()  # (Bm, D)
        tokens = (h[valid] if valid is not None else h.reshape(-1, h.shape[-1])).float()
        out[f"monitor/{m}/embed_std"] = F.normalize(e, dim=-1).std(0).mean()
        out[f"monitor/{m}/rankme"] = rankme(e)
        out[f"monitor/{m}/target_var"] = tokens.var(0).mean()
    return out
