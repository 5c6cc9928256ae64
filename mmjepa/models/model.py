"""``MMJepaModel``: context encoders, EMA target encoders, one cross-modal predictor, and the
objectives its config names.

Design decisions:
- one encoder per modality over that modality's tokens (built by its plug-in's embed), of one
  width D: the shared latent space; the EMA target encoders are exact copies at init;
- the forward builds a :class:`JepaView` of the batch and sums the objectives' weighted losses; the
  view computes context latents, targets and predictions once, when an objective first asks;
- nothing here knows a modality or an objective by name: plug-ins and registries do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..layers import Transformer, gather_tokens
from ..modalities import get_modality
from ..objectives import build_objectives
from .config import MMJepaConfig
from .ema import ema_update, momentum_at
from .encoder import Encoder
from .predictor import Predictor


@dataclass
class MMJepaOutput(ModelOutput):
    """Training forward output: ``loss`` (scalar), ``losses`` (every objective's terms by name),
    ``metrics`` (monitors)."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    metrics: dict[str, torch.Tensor] | None = None


class MMJepaPreTrainedModel(PreTrainedModel):
    config_class = MMJepaConfig
    config: MMJepaConfig
    base_model_prefix = "mmjepa"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        """I-JEPA init: truncated normal (std ``initializer_range``) for linear/conv weights, zero
        biases, unit LayerNorms, residual projections divided by sqrt(2 * layer id), and the EMA
        targets starting as exact copies of the context encoders."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Predictor):
            init.trunc_normal_(module.mask_token, std=std)
            if module.modality_embed is not None:
                init.trunc_normal_(module.modality_embed, std=std)
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        # transformers skips modules without parameters of their own, so the two whole-model steps
        # run here, after the per-module init; both leave tensors loaded from a checkpoint alone.
        super().initialize_weights()
        for module in self.modules():
            if isinstance(module, Transformer):
                for layer_id, blk in enumerate(module.blocks, start=1):
                    for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
                        init.copy_(w, w / math.sqrt(2.0 * layer_id))
        if isinstance(self, MMJepaModel):  # the EMA targets start as exact copies of the encoders
            for name in self.encoders:
                src = self.encoders[name].state_dict()
                for key, t in self.target_encoders[name].state_dict(keep_vars=True).items():
                    init.copy_(t, src[key])


class MMJepaModel(MMJepaPreTrainedModel):
    """Multimodal JEPA.

    - ``encoders[m]``: context encoder of modality m, sees only the visible tokens;
    - ``target_encoders[m]``: its EMA copy (no gradients), sees all tokens; its layer-normed outputs
      are the prediction targets, and it provides the embeddings for downstream use;
    - ``predictor``: one narrow transformer that predicts target latents of any modality from the
      context latents of all modalities present;
    - ``objectives``: the losses (``mmjepa.objectives``), with their own parameters (e.g. a readout head).
    """

    def __init__(self, config: MMJepaConfig):
        super().__init__(config)
        if not config.modalities:
            raise ValueError("the config names no modality: give MMJepaConfig(modalities={name: options, ...}), "
                             "e.g. {\"image\": {\"image_size\": 224, \"patch_size\": 16}}")
        self.modality_names = list(config.modalities)
        self.main_input_name = get_modality(self.modality_names[0]).input_key
        self.encoders = nn.ModuleDict({m: self._encoder(m) for m in self.modality_names})
        self.target_encoders = nn.ModuleDict({m: self._encoder(m) for m in self.modality_names})
        self.target_encoders.requires_grad_(False)
        c = config
        self.predictor = Predictor(c.hidden_size, c.predictor_hidden_size, c.predictor_num_hidden_layers,
                                   c.predictor_num_attention_heads,
                                   {m: enc.embed for m, enc in self.encoders.items()}, c.mlp_ratio,
                                   c.qkv_bias, c.layer_norm_eps, rope=c.position_embedding == "rope")
        self.objectives = build_objectives(config)
        self.post_init()

    def _encoder(self, name: str) -> Encoder:
        c, rope = self.config, self.config.position_embedding == "rope"
        embed = get_modality(name).build_embed(c.modality_config(name), c.hidden_size, add_positions=not rope)
        return Encoder(embed, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.mlp_ratio, c.qkv_bias,
                       c.layer_norm_eps, rope=rope)

    # ------------------------------------------------------------------ helpers
    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{modality: model input} for every modality of this model present in ``batch``."""
        out = {}
        for name in self.modality_names:
            x = batch.get(get_modality(name).input_key)
            if x is not None:
                out[name] = x
        if not out:
            keys = [get_modality(n).input_key for n in self.modality_names]
            raise ValueError(f"no model input given: expected at least one of {keys}")
        return out

    def momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum at ``step`` of ``total_steps`` under the config's linear schedule."""
        return momentum_at(step, total_steps, self.config.ema_momentum_start, self.config.ema_momentum_end)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step: target <- momentum * target + (1 - momentum) * context encoder."""
        ema_update(self.target_encoders, self.encoders, momentum)

    # ------------------------------------------------------------------ training forward
    def forward(self, masks: dict[str, dict[str, torch.Tensor]] | None = None, return_dict: bool = True,
                **batch: Any) -> MMJepaOutput:
        """The weighted sum of the objectives on a collated batch (model inputs + ``masks`` from
        :class:`mmjepa.collate.MaskCollator`)."""
        if masks is None:
            raise ValueError("the training forward needs `masks` from mmjepa's mask collator; "
                             "use model.embed(...) for embeddings")
        view = JepaView(self, batch, masks)
        loss, losses, metrics = 0.0, {}, {}
        for objective in self.objectives.values():
            out = objective(view)
            if out is None:
                continue
            loss = loss + objective.weight * out.loss
            losses.update(out.terms)
            metrics.update(out.metrics)
        if not losses:
            raise ValueError(f"no objective applies to this batch (objectives: {list(self.objectives)}, "
                             f"masked modalities: {list(masks)})")
        return MMJepaOutput(loss=loss, losses=losses, metrics=metrics)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, use_target: bool = True, **batch: Any) -> dict[str, torch.Tensor]:
        """Token latents of every modality present: {name: (B, N, D)} (target encoders by default)."""
        encoders = self.target_encoders if use_target else self.encoders
        return {name: encoders[name](x, None, get_modality(name).valid_tokens(batch))
                for name, x in self.model_inputs(batch).items()}

    @torch.no_grad()
    def embed(self, use_target: bool = True, normalize: bool = True, **batch: Any) -> dict[str, torch.Tensor]:
        """Pooled embeddings {name: (B, D)} (each plug-in's pooling: the mean over real tokens),
        L2-normalised by default."""
        out = {}
        for name, h in self.encode(use_target=use_target, **batch).items():
            mod = get_modality(name)
            pooled = mod.pool(h, mod.valid_tokens(batch), self.config.modality_config(name))  # (B, D)
            out[name] = F.normalize(pooled, dim=-1) if normalize else pooled
        return out


class JepaView:
    """One batch as the objectives see it (``mmjepa.objectives.LatentView``): context latents,
    targets and predictions of each masked modality, computed on first request and cached."""

    def __init__(self, model: MMJepaModel, batch: dict[str, Any], masks: dict[str, dict[str, torch.Tensor]]):
        self.model, self.config, self.batch, self.masks = model, model.config, batch, masks
        self.inputs = model.model_inputs(batch)
        missing = sorted(set(masks) - set(self.inputs))
        if missing:
            raise ValueError(f"masks given for modalities without inputs: {missing}")
        self._context: dict[str, tuple] = {}
        self._targets: dict[str, tuple] = {}
        self._predictions: dict[str, torch.Tensor] = {}

    def valid(self, modality: str) -> torch.Tensor | None:
        return get_modality(modality).valid_tokens(self.batch)

    def context(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if modality not in self._context:
            ms = self.masks[modality]
            z = self.model.encoders[modality](self.inputs[modality], ms["context"], ms.get("context_valid"))
            self._context[modality] = (z, ms["context"], ms.get("context_valid"))  # (B, Kc, D)
        return self._context[modality]

    def targets(self, modality: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if modality not in self._targets:
            tidx = self.masks[modality]["target"]  # (B, M, Kt)
            B, M, Kt = tidx.shape
            D = self.config.hidden_size
            with torch.no_grad():
                h = self.model.target_encoders[modality](self.inputs[modality], None, self.valid(modality))  # (B, N, D)
                h = gather_tokens(h, tidx.reshape(B, M * Kt))  # (B, M*Kt, D)
                h = F.layer_norm(h, (D,)).reshape(B * M, Kt, D)
            tv = self.masks[modality].get("target_valid")
            self._targets[modality] = (h, None if tv is None else tv.reshape(B * M, Kt))
        return self._targets[modality]

    def predictions(self, modality: str) -> torch.Tensor:
        if modality not in self._predictions:
            contexts = [(m, *self.context(m)) for m in self.masks]
            ms = self.masks[modality]
            self._predictions[modality] = self.model.predictor(contexts, modality, ms["target"],
                                                               ms.get("target_valid"))  # (B*M, Kt, D)
        return self._predictions[modality]


def compile_model(model: MMJepaModel, **compile_kwargs: Any) -> MMJepaModel:
    """Compile every context encoder, target encoder and the predictor in place with ``torch.compile``
    (inductor by default; ``compile_kwargs`` go to it, e.g. ``mode="max-autotune-no-cudagraphs"``).

    The mathematics and the state-dict keys are unchanged (``nn.Module.compile`` wraps ``__call__``
    only), so checkpoints, ``save_pretrained`` and the EMA update work as before. Optional: the
    first steps pay the compile time (minutes on a small CPU), and masks whose lengths change from
    batch to batch trigger one recompile with dynamic shapes.
    """
    for module in [*model.encoders.values(), *model.target_encoders.values(), model.predictor]:
        module.compile(**compile_kwargs)
    return model
