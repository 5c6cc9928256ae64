"""The modality plug-in interface and its registry.

A modality is one file in ``modalities/`` that defines a :class:`Modality` subclass and registers it
with :func:`register_modality`. The core (``mmjepa/``) only talks to modalities through this class:

- ``config_class``: a dataclass of the modality's settings (grid size, patch size, mask sampler ...),
  stored as a plain dict inside :class:`mmjepa.MMJepaConfig` under ``modalities[name]``;
- ``input_key``: the batch key that holds this modality's model input (``pixel_values`` ...);
- ``embed_class`` / ``build_embed(cfg, dim, add_positions)``: an ``nn.Module`` (by default
  ``embed_class(cfg, dim, add_positions)``) that turns the model input into tokens
  ``(B, N, dim)`` with the modality's fixed positions already added, and that exposes
  ``num_tokens``, ``coords`` (a buffer of (N, ndim) integer grid coordinates, for RoPE),
  ``grid_coords()`` (computes that buffer afresh) and ``position_table(dim)`` ((N, dim) fixed
  sin-cos positions, used for predictor queries);
- ``processor_class`` / ``build_processor(cfg)``: decode + normalise raw inputs into model inputs
  (by default ``processor_class(cfg)``);
- ``build_mask_sampler(cfg)``: the default mask sampler (see ``mmjepa.masking``);
- ``valid_tokens(batch)``: an optional (B, N) bool mask of real (non-padding) tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from mmjepa.layers import sincos_2d

_REGISTRY: dict[str, type["Modality"]] = {}


class Modality:
    """Base class of a modality plug-in (stateless: every method is a classmethod)."""

    name: ClassVar[str]
    input_key: ClassVar[str]
    config_class: ClassVar[type]
    embed_class: ClassVar[type[nn.Module]]  # (cfg, dim, add_positions) -> tokens (B, N, D)
    processor_class: ClassVar[type]  # (cfg) -> raw values to model inputs

    @classmethod
    def make_config(cls, cfg: dict[str, Any] | None = None) -> Any:
        """Dict (possibly partial) -> the modality's config dataclass, rejecting unknown keys."""
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown {cls.name} modality option(s) {unknown}; known: {sorted(known)}")
        return cls.config_class(**cfg)

    @classmethod
    def build_embed(cls, cfg: Any, dim: int, add_positions: bool = True) -> nn.Module:
        return cls.embed_class(cfg, dim, add_positions)

    @classmethod
    def build_processor(cls, cfg: Any) -> Any:
        return cls.processor_class(cfg)

    @classmethod
    def build_mask_sampler(cls, cfg: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def valid_tokens(cls, batch: dict[str, Any], embed: nn.Module) -> torch.Tensor | None:
        """(B, N) bool mask of real tokens, or None when every token is real (the default)."""
        return None


def pair(x: int | Sequence[int]) -> tuple[int, int]:
    """An int or a 2-sequence -> (int, int) (patch and grid sizes)."""
    if isinstance(x, int):
        return (x, x)
    a, b = x
    return int(a), int(b)


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a modality available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get_modality(name: str) -> type[Modality]:
    """Look a modality up by name, importing the built-in ones on first use."""
    if name not in _REGISTRY:
        from mmjepa import modalities as _builtin  # noqa: F401  (registers image/audio/text)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; registered: {sorted(_REGISTRY)}") from None


def registered_modalities() -> list[str]:
    """Names of every registered modality (the built-in ones included)."""
    from mmjepa import modalities as _builtin  # noqa: F401
    return sorted(_REGISTRY)


class GridPatchEmbed(nn.Module):
    """Shared part of the 2-D patch embeddings (image pixels, spectrograms): a strided ``proj`` conv
    over a (rows, cols) token grid plus fixed 2-D sin-cos positions.

    ``proj`` and ``pos_embed`` correspond 1:1 to ``patch_embed.proj`` and ``pos_embed`` of I-JEPA /
    timm ViTs (``pos_embed`` is a persistent buffer so a checkpoint's table is loaded as it is).
    Subclasses check their input's shape and call :meth:`tokens`.
    """

    def __init__(self, grid: tuple[int, int], in_channels: int, patch: int | tuple[int, int], dim: int,
                 add_positions: bool = True):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_tokens = self.grid[0] * self.grid[1]
        self.dim = dim
        self.add_positions = add_positions
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", self.position_table(dim).unsqueeze(0), persistent=True)  # (1, N, D)
        self.register_buffer("coords", self.grid_coords(), persistent=False)  # (N, 2) (row, col)

    def grid_coords(self) -> torch.Tensor:
        rows = torch.arange(self.grid[0]).repeat_interleave(self.grid[1])
        cols = torch.arange(self.grid[1]).repeat(self.grid[0])
        return torch.stack([rows, cols], 1)

    def position_table(self, dim: int) -> torch.Tensor:
        return sincos_2d(dim, *self.grid)  # (N, dim)

    def reset_buffers(self) -> None:
        """(Re)compute the fixed tables (called by weight init; a loaded ``pos_embed`` is kept)."""
        from transformers import initialization as init

        init.copy_(self.pos_embed, self.position_table(self.dim).unsqueeze(0))
        self.coords = self.grid_coords().to(self.pos_embed.device)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D) row-major patch tokens, positions added unless disabled."""
        x = self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.pos_embed if self.add_positions else x
