"""Mask samplers, run in the collator (``mmjepa.collate``), that return index tensors.

Every sampler is called once per batch as ``sampler(batch_size, generator, **info)`` and returns a
*mask set*, a plain dict of tensors (so that ``accelerate`` moves it to the device like any batch):

- ``context``: (B, Kc) int64 indices of the visible tokens fed to the context encoder;
- ``target``:  (B, M, Kt) int64 indices of the tokens to predict, M target groups per sample;
- optionally ``context_valid`` (B, Kc) / ``target_valid`` (B, M, Kt) bool, False on padding
  entries when samples of a batch keep different numbers of tokens (text, variable-length audio).

Image samplers keep equal lengths across the batch by truncating to the batch minimum, as the
I-JEPA code does, so they return no validity masks and the encoders run without attention masks.

Samplers here are generic over token layouts: ``MultiBlock2D`` / ``RandomPatch`` on a 2-D grid or
any token set, ``SpanMasking`` on a 1-D sequence. A modality plug-in picks and configures one in
``build_mask_sampler`` (or defines its own, e.g. the audio time-frequency blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

MaskSet = dict[str, torch.Tensor]
CORNERS = ("reference", "full")  # where MultiBlock2D may put a block's top-left corner


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
    the scale and the aspect ratio of a block, and (with ``corners="reference"``, the default) a
    block's top-left corner is drawn from ``[0, H - h)`` x ``[0, W - w)``. That half-open draw never
    places a block on the last row or column of the grid: those patches are never a target nor
    context, and a context block of the largest size (``H - 1`` rows) always sits at the top-left.
    On ImageNet's 14x14 grid one patch row of fourteen is lost; on small grids the share is larger.
    ``corners="full"`` draws the corner from ``[0, H - h]`` x ``[0, W - w]`` inclusive, so every
    patch can be a target or context; the default is kept to reproduce the reference bit for bit.
    """

    grid: tuple[int, int]
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 4
    allow_overlap: bool = False
    corners: str = "reference"  # "reference": corners in [0, H - h), as I-JEPA; "full": [0, H - h]

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        H, W = self.grid
        if self.corners not in CORNERS:
            raise ValueError(f"corners must be one of {CORNERS}, got {self.corners!r}")
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
        end = 1 if self.corners == "full" else 0  # "full": the last corner row / column is allowed too
        while True:
            top = int(torch.randint(0, H - h + end, (1,), generator=g))
            left = int(torch.randint(0, W - w + end, (1,), generator=g))
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


def geometric_p_for_mean(mean: float, max_span: int) -> float:
    """The p of a geometric distribution on {1, 2, ...} that, truncated to ``[1, max_span]``
    and renormalised, has the given ``mean`` (found by bisection; the mean falls as p grows)."""
    if not 1.0 <= mean < (max_span + 1) / 2 or max_span < 1:
        raise ValueError(f"mean_span must lie in [1, (max_span + 1) / 2) = [1, {(max_span + 1) / 2}), got {mean}")
    if mean == 1.0:
        return 1.0
    def truncated_mean(p: float) -> float:  # plain Python: configs may be built under a meta device
        w = [p * (1 - p) ** (k - 1) for k in range(1, max_span + 1)]
        return sum(wk * k for k, wk in enumerate(w, start=1)) / sum(w)

    lo, hi = 1e-9, 1.0 - 1e-12
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if truncated_mean(mid) > mean:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def pack_indices(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Variable-length index rows -> (B, K) int64 padded with 0, and (B, K) bool validity (None
    when every row has the same length)."""
    lengths = [len(r) for r in rows]
    K = max(lengths)
    out = torch.zeros(len(rows), K, dtype=torch.long)
    valid = torch.zeros(len(rows), K, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return out, (None if min(lengths) == K else valid)


@dataclass
class SpanMasking:
    """SpanBERT/T5-style span masking over a 1-D token sequence.

    Per sample, ``round(mask_ratio * L)`` of its ``L`` real tokens are hidden, in spans whose
    lengths are drawn from a geometric distribution clipped to ``[1, max_span]`` (mean
    ``mean_span``; the last span is shortened to hit the ratio exactly). Spans never touch each
    other, so every run of masked tokens is one span. The masked tokens form the sample's single
    target group; the other real tokens are its context. Returns a mask set with ``context``
    (B, Kc), ``target`` (B, 1, Kt) and validity masks when lengths differ across the batch.
    """

    num_tokens: int
    mask_ratio: float = 0.25
    mean_span: float = 3.0
    max_span: int = 10

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        self.p = geometric_p_for_mean(float(self.mean_span), int(self.max_span))
        self.length_probs = [self.p * (1 - self.p) ** (k - 1) for k in range(1, self.max_span + 1)]  # unnormalised

    def span_lengths(self, n_mask: int, g: torch.Generator) -> list[int]:
        """Clipped-geometric span lengths summing to exactly ``n_mask``."""
        lengths: list[int] = []
        total = 0
        probs = torch.tensor(self.length_probs, dtype=torch.float64, device="cpu")
        while total < n_mask:
            draw = torch.multinomial(probs, 16, replacement=True, generator=g) + 1
            for length in draw.tolist():
                length = min(length, n_mask - total)
                lengths.append(length)
                total += length
                if total == n_mask:
                    break
        return lengths

    def sample(self, length: int, g: torch.Generator) -> torch.Tensor:
        """A (length,) bool mask, True on masked tokens."""
        if length < 2:
            raise ValueError(f"span masking needs at least 2 real tokens per sample, got {length}")
        n_mask = min(max(1, int(round(self.mask_ratio * length))), length - 1)
        lengths = self.span_lengths(n_mask, g)
        n_keep = length - n_mask
        while len(lengths) - 1 > n_keep:  # too many spans to keep them apart: merge two
            last = lengths.pop()
            lengths[int(torch.randint(len(lengths), (1,), generator=g))] += last
        order = torch.randperm(len(lengths), generator=g).tolist()
        lengths = [lengths[i] for i in order]
        k = len(lengths)
        extra = n_keep - (k - 1)  # unmasked tokens free to place among the k + 1 gaps
        cuts = torch.randperm(extra + k, generator=g)[:k].sort().values.tolist()  # stars and bars
        gaps, prev = [], -1
        for c in cuts:
            gaps.append(c - prev - 1)
            prev = c
        mask = torch.zeros(length, dtype=torch.bool)
        pos = 0
        for i, span in enumerate(lengths):
            pos += gaps[i] + (1 if i > 0 else 0)
            mask[pos : pos + span] = True
            pos += span
        return mask

    def __call__(self, batch_size: int, generator: torch.Generator, valid: torch.Tensor | None = None,
                 **_: Any) -> dict[str, torch.Tensor]:
        contexts, targets = [], []
        for b in range(batch_size):
            real = valid[b].nonzero().squeeze(1) if valid is not None else torch.arange(self.num_tokens)  # (L,)
            m = self.sample(len(real), generator)
            targets.append(real[m])
            contexts.append(real[~m])
        context, cv = pack_indices(contexts)
        target, tv = pack_indices(targets)
        out = {"context": context, "target": target.unsqueeze(1)}  # (B, Kc), (B, 1, Kt)
        if cv is not None:
            out["context_valid"] = cv
        if tv is not None:
            out["target_valid"] = tv.unsqueeze(1)
        return out
