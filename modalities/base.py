"""The modality plug-in interface and its registry.

A modality is one file in ``modalities/`` that defines a :class:`Modality` subclass and registers it
with :func:`register_modality`. The core (``mmjepa/``) only talks to modalities through this class:

- ``config_class``: a dataclass of the modality's settings (grid size, patch size, mask sampler ...),
  stored as a plain dict inside :class:`mmjepa.MMJepaConfig` under ``modalities[name]``;
- ``input_key``: the batch key that holds this modality's model input (``pixel_values`` ...);
- ``build_embed(cfg, dim)``: an ``nn.Module`` that turns the model input into tokens
  ``(B, N, dim)`` with the modality's fixed positions already added, and that exposes
  ``num_tokens``, ``coords`` (a buffer of (N, ndim) integer grid coordinates, for RoPE),
  ``grid_coords()`` (computes that buffer afresh) and ``position_table(dim)`` ((N, dim) fixed
  sin-cos positions, used for predictor queries);
- ``build_processor(cfg)``: decode + normalise raw inputs into model inputs;
- ``build_mask_sampler(cfg)``: the default mask sampler (see ``mmjepa.masking``);
- ``valid_tokens(batch)``: an optional (B, N) bool mask of real (non-padding) tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type["Modality"]] = {}


class Modality:
    """Base class of a modality plug-in (stateless: every method is a classmethod)."""

    name: ClassVar[str]
    input_key: ClassVar[str]
    config_class: ClassVar[type]

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
    def build_embed(cls, cfg: Any, dim: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def build_processor(cls, cfg: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def build_mask_sampler(cls, cfg: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def valid_tokens(cls, batch: dict[str, Any], embed: nn.Module) -> torch.Tensor | None:
        """(B, N) bool mask of real tokens, or None when every token is real (the default)."""
        return None


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
