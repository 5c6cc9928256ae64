"""Mask samplers, run in the collator, that return index tensors.

Every sampler is called once per batch as ``sampler(batch_size, generator, **info)`` and returns a
*mask set*, a plain dict of tensors (so that ``accelerate`` moves it to the device like any batch):

- ``context``: (B, Kc) int64 indices of the visible tokens fed to the context encoder;
- ``target``:  (B, M, Kt) int64 indices of the tokens to predict, M target groups per sample;
- optionally ``context_valid`` (B, Kc) / ``target_valid`` (B, M, Kt) bool, False on padding
  entries when samples of a batch keep different numbers of tokens (text, variable-length audio).

Image samplers keep equal lengths across the batch by truncating to the batch minimum, as the
I-JEPA code does, so they return no validity masks and the encoders run without attention masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

MaskSet = dict[str, torch.Tensor]


def _check_range(name: str, lo_hi: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    a, b = (float(v) for v in lo_hi)
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= min <= max <= {hi}, got {lo_hi}")
    return a, b


@dataclass
class MultiBlock2D:
    """I-JEPA multi-block masking on an (H, W) token grid.

    Per batch, one target block size (``target_scale`` of the grid, aspect ``target_aspect``) and one
    context block size (``context_scale``, aspect ``context_aspect``) are drawn; per sample,
    ``num_targets`` target blocks are placed at random, then one context block with every target
    patch removed (unless ``allow_overlap``). Every mask is truncated to the shortest one of the
    batch so that the encoders see equal lengths without padding.

    Faithful to the reference code, including two of its conventions: one uniform draw sets both
    the scale and the aspect ratio of a block, and a block's top-left corner is drawn from
    ``[0, H - h)`` x ``[0, W - w)``.
    """

    grid: tuple[int, int]
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 4
    allow_overlap: bool = False

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        H, W = self.grid
        if H < 2 or W < 2:
            raise ValueError(f"multi-block masking needs a grid of at least 2x2 tokens, got {self.grid}")
        if self.num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {self.num_targets}")
        self.target_scale = _check_range("target_scale", self.target_scale, 0.0, 1.0)
        self.context_scale = _check_range("context_scale", self.context_scale, 0.0, 1.0)
        self.target_aspect = _check_range("target_aspect", self.target_aspect, 1e-3, 1e3)
        self.context_aspect = _check_range("context_aspect", self.context_aspect, 1e-3, 1e3)
        if self.min_keep >= H * W:
            raise ValueError(f"min_keep ({self.min_keep}) must be smaller than the grid ({H * W} tokens)")

    def block_size(self, g: torch.Generator, scale, aspect) -> tuple[int, int]:
        H, W = self.grid
        r = torch.rand(1, generator=g).item()
        max_keep = int(H * W * (scale[0] + r * (scale[1] - scale[0])))
        ar = aspect[0] + r * (aspect[1] - aspect[0])
        h = int(round(math.sqrt(max_keep * ar)))
        w = int(round(math.sqrt(max_keep / ar)))
        h, w = min(max(h, 1), H - 1), min(max(w, 1), W - 1)
        return h, w

    def _place(self, g: torch.Generator, size: tuple[int, int], allowed: list[torch.Tensor] | None):
        """One block at a random place, restricted to ``allowed`` regions -> (flat idx, complement)."""
        H, W = self.grid
        h, w = size
        tries, timeout = 0, 20
        while True:
            top = int(torch.randint(0, H - h, (1,), generator=g))
            left = int(torch.randint(0, W - w, (1,), generator=g))
            mask = torch.zeros(H, W, dtype=torch.bool)
            mask[top : top + h, left : left + w] = True
            if allowed is not None:
                # after every 20 failed placements, respect one acceptable region fewer
                for region in allowed[: max(len(allowed) - tries, 0)]:
                    mask &= region
            idx = mask.flatten().nonzero().squeeze(1)
            if len(idx) > self.min_keep:
                break
            timeout -= 1
            if timeout == 0:
                tries, timeout = tries + 1, 20
        complement = torch.ones(H, W, dtype=torch.bool)
        complement[top : top + h, left : left + w] = False
        return idx, complement

    def __call__(self, batch_size: int, generator: torch.Generator, **_: Any) -> MaskSet:
        g = generator
        t_size = self.block_size(g, self.target_scale, self.target_aspect)
        c_size = self.block_size(g, self.context_scale, self.context_aspect)
        for what, (h, w) in (("target", t_size), ("context", c_size)):
            if h * w <= self.min_keep:
                raise ValueError(
                    f"a {what} block of {h}x{w} tokens can never keep more than min_keep={self.min_keep} tokens "
                    f"on a {self.grid[0]}x{self.grid[1]} grid; lower min_keep or raise {what}_scale"
                )
        targets, contexts = [], []
        for _ in range(batch_size):
            tgt, comps = [], []
            for _ in range(self.num_targets):
                idx, comp = self._place(g, t_size, None)
                tgt.append(idx)
                comps.append(comp)
            ctx, _ = self._place(g, c_size, None if self.allow_overlap else comps)
            targets.append(tgt)
            contexts.append(ctx)
        kt = min(len(t) for tgt in targets for t in tgt)
        kc = min(len(c) for c in contexts)
        target = torch.stack([torch.stack([t[:kt] for t in tgt]) for tgt in targets])  # (B, M, Kt)
        context = torch.stack([c[:kc] for c in contexts])  # (B, Kc)
        return {"context": context, "target": target}


@dataclass
class RandomPatch:
    """Random-patch masking (the MAE-style baseline): each sample hides ``mask_ratio`` of its tokens
    at random; the hidden tokens form one target group, the rest is the context."""

    num_tokens: int
    mask_ratio: float = 0.6

    def __post_init__(self):
        n_t = int(round(self.num_tokens * self.mask_ratio))
        if not 0 < n_t < self.num_tokens:
            raise ValueError(
                f"mask_ratio {self.mask_ratio} leaves no target or no context on {self.num_tokens} tokens"
            )

    def __call__(self, batch_size: int, generator: torch.Generator, **_: Any) -> MaskSet:
        n_t = int(round(self.num_tokens * self.mask_ratio))
        perm = torch.stack([torch.randperm(self.num_tokens, generator=generator) for _ in range(batch_size)])
        target = perm[:, :n_t].sort(dim=1).values.unsqueeze(1)  # (B, 1, Kt)
        context = perm[:, n_t:].sort(dim=1).values  # (B, Kc)
        return {"context": context, "target": target}


class MaskCollator:
    """Collate processed samples into a batch and draw every modality's masks.

    ``samplers`` maps a modality name to (input key, mask sampler). Samples are dicts of per-sample
    tensors keyed by input key; each modality's inputs are stacked (or padded by ``collate_fns``).
    The generator is seeded from ``seed`` so a run's masks are reproducible; ``state_dict`` /
    ``load_state_dict`` carry the generator for exact resume.
    """

    def __init__(
        self,
        samplers: dict[str, tuple[str, Callable[..., MaskSet]]],
        seed: int = 0,
        collate_fns: dict[str, Callable[[list], dict[str, torch.Tensor]]] | None = None,
    ):
        self.samplers = samplers
        self.collate_fns = collate_fns or {}
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        masks: dict[str, MaskSet] = {}
        for name, (key, sampler) in self.samplers.items():
            if name in self.collate_fns:
                batch.update(self.collate_fns[name](samples))
                info = {"valid": batch.get(f"{key}_valid")}
            else:
                batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
                info = {}
            masks[name] = sampler(len(samples), self.generator, **info)
        extra = sorted({k for s in samples for k in s} - set(batch))
        for k in extra:  # labels, keys ... pass through
            vals = [s.get(k) for s in samples]
            batch[k] = torch.as_tensor(vals) if all(isinstance(v, (int, float)) for v in vals) else vals
        batch["masks"] = masks
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
