"""``MMJepaConfig``: one transformers config for the modalities, encoders, predictor, objectives and EMA."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedConfig

from ..modalities import get_modality
from ..objectives import get_objective, objective_config

# width, depth, heads of the encoders; width, depth, heads of the predictor
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                 predictor_hidden_size=96, predictor_num_hidden_layers=6, predictor_num_attention_heads=3),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                  predictor_hidden_size=192, predictor_num_hidden_layers=6, predictor_num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 predictor_hidden_size=384, predictor_num_hidden_layers=12, predictor_num_attention_heads=12),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  predictor_hidden_size=384, predictor_num_hidden_layers=12, predictor_num_attention_heads=16),
}

POSITIONS = ("sincos", "rope")


class MMJepaConfig(PreTrainedConfig):
    """Configuration of :class:`mmjepa.MMJepaModel`.

    Args:
        modalities: modality name -> that modality's options (see ``modalities/<name>.py``);
            missing options take the modality's defaults. A model needs at least one; a config
            without any exists only as transformers' reference for default values.
        hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio, qkv_bias, layer_norm_eps:
            the context/target encoders (one per modality, all of width ``hidden_size`` = the shared
            latent dimension D).
        predictor_hidden_size, predictor_num_hidden_layers, predictor_num_attention_heads:
            the narrow cross-modal predictor.
        position_embedding: ``"sincos"`` (fixed, added to tokens, as I-JEPA) or ``"rope"``.
        objectives: objective name -> its options (``type``, ``weight`` and the type's own; see
            ``mmjepa.objectives``); the loss is the weighted sum. Default: ``{"intra": {}}`` (I-JEPA's
            latent prediction) plus the defaults of the modalities (a text model adds ``readout``).
        ema_momentum_start, ema_momentum_end: the target encoders' EMA momentum, scheduled linearly.
        initializer_range: std of the truncated-normal weight init.
    """

    model_type = "mmjepa"

    def __init__(
        self,
        modalities: dict[str, dict[str, Any]] | None = None,
        hidden_size: int = 192,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        predictor_hidden_size: int = 96,
        predictor_num_hidden_layers: int = 6,
        predictor_num_attention_heads: int = 3,
        position_embedding: str = "sincos",
        objectives: dict[str, dict[str, Any]] | None = None,
        ema_momentum_start: float = 0.996,
        ema_momentum_end: float = 1.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.modalities = {k: dict(v or {}) for k, v in (modalities or {}).items()}
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.predictor_hidden_size = predictor_hidden_size
        self.predictor_num_hidden_layers = predictor_num_hidden_layers
        self.predictor_num_attention_heads = predictor_num_attention_heads
        self.position_embedding = position_embedding
        self.objectives = self._objectives(objectives)
        self.ema_momentum_start = ema_momentum_start
        self.ema_momentum_end = ema_momentum_end
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_values()

    def validate_values(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.position_embedding not in POSITIONS:
            raise ValueError(f"position_embedding must be one of {POSITIONS}, got {self.position_embedding!r}")
        for width, heads, name in (
            (self.hidden_size, self.num_attention_heads, "hidden_size"),
            (self.predictor_hidden_size, self.predictor_num_attention_heads, "predictor_hidden_size"),
        ):
            if width <= 0 or heads <= 0 or width % heads:
                raise ValueError(f"{name} ({width}) must be a positive multiple of its number of heads ({heads})")
            if width % 4:
                raise ValueError(f"{name} ({width}) must be divisible by 4 for 2-D sin-cos positions")
        if not 0.0 <= self.ema_momentum_start <= self.ema_momentum_end <= 1.0:
            raise ValueError(
                "need 0 <= ema_momentum_start <= ema_momentum_end <= 1, got "
                f"{self.ema_momentum_start} and {self.ema_momentum_end}"
            )
        for name, opts in self.modalities.items():
            try:
                get_modality(name).make_config(opts)  # unknown modality or option -> ValueError
            except (ValueError, TypeError) as err:
                raise ValueError(f"modalities.{name}: {err}") from None
        if not self.objectives:
            raise ValueError("objectives must name at least one objective")
        for name, opts in self.objectives.items():
            try:
                cfg = objective_config(name, opts)
                get_objective(cfg.type).validate(cfg, self)
            except (ValueError, TypeError) as err:
                raise ValueError(f"objectives.{name}: {err}") from None

    def _objectives(self, objectives: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
        """The objective entries with every option filled in (the defaults when none are given)."""
        if objectives is None:
            objectives = {"intra": {}}
            for name in self.modalities:
                objectives.update(get_modality(name).default_objectives)
        out = {}
        for name, opts in objectives.items():
            try:
                out[name] = dataclasses.asdict(objective_config(name, opts))
            except (ValueError, TypeError) as err:
                raise ValueError(f"objectives.{name}: {err}") from None
        return out

    def modality_config(self, name: str) -> Any:
        """The typed (dataclass) options of one modality, defaults filled in."""
        if name not in self.modalities:
            raise ValueError(f"this model has no {name!r} modality (it has {list(self.modalities)})")
        return get_modality(name).make_config(self.modalities[name])

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "MMJepaConfig":
        """``tiny`` (ViT-Ti), ``small`` (ViT-S), ``base`` (ViT-B) or ``large`` (ViT-L) widths and depths."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})
