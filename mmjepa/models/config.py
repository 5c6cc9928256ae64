"""``MMJepaConfig``: one transformers config for the modalities, encoders, predictor, objectives and EMA."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

from transformers import PreTrainedConfig

from ..modalities import get_modality
from ..processing import HERE, path_options
from ..objectives import get_objective, objective_config
from ..layers import ATTENTION_BACKENDS
from .backbone import check_entry

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
CONTENTS = ("full", "embedding")

# keys a config.json may hold besides mmjepa's own: transformers' common ones (and a few older ones)
_TRANSFORMERS_KEYS = set(inspect.signature(PreTrainedConfig.__init__).parameters) | {
    "model_type", "name_or_path", "torch_dtype", "output_attentions", "use_cache", "tie_word_embeddings",
    "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "pruned_heads",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "torchscript", "use_bfloat16",
    "tf_legacy_loss", "attn_implementation", "is_decoder", "add_cross_attention", "auto_map", "base_model_tp_plan",
    "base_model_pp_plan"}
# numeric options; floats: (lowest, whether the lowest is allowed)
_INT_OPTIONS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "predictor_hidden_size",
                "predictor_num_hidden_layers", "predictor_num_attention_heads", "mask_sets")
_FLOAT_OPTIONS = {"mlp_ratio": (0.0, False), "layer_norm_eps": (0.0, False), "initializer_range": (0.0, True),
                  "ema_momentum_start": (0.0, True), "ema_momentum_end": (0.0, True)}


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
        attention_backend: the attention kernel of mmjepa's own encoders and predictor: ``"sdpa"``
            (``F.scaled_dot_product_attention``), ``"matmul"`` (plain matmul attention, softmax in
            fp32) or ``"auto"`` (matmul on CPU under bf16/fp16 for sequences up to 1024 tokens,
            SDPA otherwise; see ``mmjepa.layers.attention``). It changes speed, not the weights.
        objectives: objective name -> its options (``type``, ``weight`` and the type's own; see
            ``mmjepa.objectives``); the loss is the weighted sum. Default: ``{"intra": {}}`` (I-JEPA's
            latent prediction) plus the defaults of the modalities (a text model adds ``readout``).
        ema_momentum_start, ema_momentum_end: the target encoders' EMA momentum, scheduled linearly.
        initializer_range: std of the truncated-normal weight init.
        predictor_modalities: the order of the predictor's modality-embedding rows; None: the order
            of ``modalities``. Saved as a list (``config.json`` sorts the keys of ``modalities``),
            and kept by :meth:`subset` so that a model loaded with only some of its modalities keeps
            the full model's rows.
        checkpoint_contents: ``"full"`` (encoders, EMA targets, predictor, objectives' heads: what
            continued training needs) or ``"embedding"`` (EMA targets and centres only: what
            embedding needs), as written by ``save_pretrained(..., embedding_only=...)``.
        backbones: modality name -> a Hugging Face transformers model used as that modality's
            encoder instead of mmjepa's own (``{"pretrained": folder | Hub id | "pkg:PACKAGE/folder",
            "config": {...}}``; see ``mmjepa.models.backbone``). Its width may differ from
            ``hidden_size`` (a Linear projects to it); ``num_hidden_layers`` etc. then concern the
            other modalities only. The whole transformers config is filled in when the model is
            built, so a saved model needs no pretrained folder; the weights are loaded by
            ``MMJepaModel.load_backbones`` (or ``MMJepaModel.from_backbones``, or the trainer).
        mask_sets: R, the number of independent mask sets the collator draws per sample (data2vec
            2.0's multi-mask training). The EMA target encoder runs once per sample, the context
            encoder and the predictor once per mask set, and the intra-modal loss averages over all
            sets; other objectives see the first set. 1 (the default) is I-JEPA.
        predictor_context_once: the predictor runs one sequence per sample, ``[context, queries of
            every target block]``, under a block attention mask (context tokens attend to context
            only, each block's queries to the context and their own block), instead of one sequence
            ``[context, queries]`` per block (I-JEPA, the default, where the context tokens also
            attend to that block's queries). Cheaper for several target blocks; not the same function.
        context_mask_tokens: the modalities whose context encoder sees every token, the masked ones
            replaced by a learned mask embedding (BERT's and data2vec's input), instead of only the
            visible ones (I-JEPA). Every encoder layer then computes at the masked positions and the
            predictor reads those latents as context too; the encoder costs N instead of K tokens.
            Not for a modality with a Hugging Face backbone.

    Masks are not part of a checkpoint: each modality's options (``modalities[m]``: ``mask``,
    ``num_targets``, scales...) say how the collator samples them during training, as index tensors
    of the tokens each context and target block keeps (see ``mmjepa.masking``).
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
        predictor_modalities: list[str] | None = None,
        checkpoint_contents: str = "full",
        backbones: dict[str, dict[str, Any]] | None = None,
        mask_sets: int = 1,
        predictor_context_once: bool = False,
        attention_backend: str = "auto",
        context_mask_tokens: list[str] | None = None,
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
        self.attention_backend = attention_backend
        self.objectives = self._objectives(objectives)
        self.ema_momentum_start = ema_momentum_start
        self.ema_momentum_end = ema_momentum_end
        self.initializer_range = initializer_range
        # written out as a list: config.json sorts the keys of ``modalities``, the rows keep their order
        self.predictor_modalities = list(predictor_modalities or self.modalities)
        self.checkpoint_contents = checkpoint_contents
        self.backbones = {k: dict(v) if isinstance(v, dict) else v for k, v in (backbones or {}).items()}
        self.mask_sets = mask_sets
        self.predictor_context_once = predictor_context_once
        self.context_mask_tokens = (context_mask_tokens if isinstance(context_mask_tokens, str)  # refused below
                                    else list(context_mask_tokens or []))
        unknown = sorted(k for k in kwargs if not k.startswith("_") and k not in _TRANSFORMERS_KEYS)
        if unknown:
            own = [p for p in inspect.signature(MMJepaConfig.__init__).parameters if p not in ("self", "kwargs")]
            close = difflib.get_close_matches(unknown[0], own, n=1)
            raise ValueError(f"unknown MMJepaConfig option(s) {unknown}"
                             + (f" (did you mean {close[0]!r}?)" if close else f"; known: {own}"))
        super().__init__(**kwargs)
        self.validate_values()

    def validate_values(self) -> None:
        """Raise ValueError (TypeError for a wrong type) naming the first bad option."""
        for name in _INT_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, (low, inclusive) in _FLOAT_OPTIONS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
            if not (value >= low if inclusive else value > low) or value != value or value == float("inf"):
                raise ValueError(f"{name} must be a finite number {'>=' if inclusive else '>'} {low}, got {value}")
        for name in ("qkv_bias", "predictor_context_once"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.position_embedding not in POSITIONS:
            raise ValueError(f"position_embedding must be one of {POSITIONS}, got {self.position_embedding!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
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
        if not set(self.modalities) <= set(self.predictor_modalities):
            raise ValueError(f"predictor_modalities {self.predictor_modalities} must include every modality "
                             f"{list(self.modalities)}")
        if self.checkpoint_contents not in CONTENTS:
            raise ValueError(f"checkpoint_contents must be one of {CONTENTS}, got {self.checkpoint_contents!r}")
        for name, entry in self.backbones.items():
            if name not in self.modalities:
                raise ValueError(f"backbones.{name}: the model has no {name!r} modality (it has {list(self.modalities)})")
            check_entry(name, entry)
        if isinstance(self.context_mask_tokens, str) or not all(isinstance(m, str) for m in self.context_mask_tokens):
            raise TypeError(f"context_mask_tokens must be a list of modality names, got {self.context_mask_tokens!r}")
        for name in self.context_mask_tokens:
            if self.modalities and name not in self.modalities:
                raise ValueError(f"context_mask_tokens: the model has no {name!r} modality (it has {list(self.modalities)})")
            if name in self.backbones:
                raise ValueError(f"context_mask_tokens: {name!r} has a Hugging Face backbone encoder, which takes no "
                                 "mask embedding; leave it out")
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

    def subset(self, modalities: list[str]) -> "MMJepaConfig":
        """This config with only ``modalities`` (and the objectives that still apply to them); the
        predictor keeps the full model's modality rows (``predictor_modalities``)."""
        modalities = list(modalities)
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown or not modalities:
            raise ValueError(f"modalities={modalities}: this model has {list(self.modalities)}")
        base = self.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            base.pop(key, None)
        base["modalities"] = {m: self.modalities[m] for m in modalities}
        base["backbones"] = {m: e for m, e in self.backbones.items() if m in modalities}
        base["predictor_modalities"] = self.predictor_modalities
        base["context_mask_tokens"] = [m for m in self.context_mask_tokens if m in modalities]
        kept = {}
        for name, opts in self.objectives.items():
            try:
                type(self)(**{**base, "objectives": {name: opts}})
            except ValueError:
                continue  # it needs a modality left out
            kept[name] = opts
        return type(self)(**{**base, "objectives": kept or {"intra": {}}})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "MMJepaConfig":
        """``PreTrainedConfig.from_pretrained``, with the modality options that name files saved in
        the folder (written as ``"."`` by ``save_pretrained``) pointing at that folder or Hub id."""
        out = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        (out[0] if isinstance(out, tuple) else out).resolve_saved_paths(pretrained_model_name_or_path)
        return out

    def resolve_saved_paths(self, ref: Any) -> None:
        """Point the modality options saved as ``"."`` (files saved in the model's folder) at
        ``ref``, the folder or Hub id the config was loaded from."""
        for name, opts in self.modalities.items():
            for key in path_options(get_modality(name).config_class):
                if opts.get(key) == HERE:
                    opts[key] = str(ref)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "MMJepaConfig":
        """``tiny`` (ViT-Ti), ``small`` (ViT-S), ``base`` (ViT-B) or ``large`` (ViT-L) widths and depths."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})
