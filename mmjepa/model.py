"""``MMJepaModel``: context encoders, EMA target encoders and one cross-modal predictor."""

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

from .config import MMJepaConfig
from .ema import ema_update, momentum_at
from .encoder import Encoder
from .layers import RotaryEmbedding, Transformer, gather_tokens, masked_mean
from .losses import collapse_metrics, latent_loss, sigreg
from .modalities import get_modality
from .predictor import Predictor


@dataclass
class MMJepaOutput(ModelOutput):
    """Training forward output: ``loss`` (scalar), ``losses`` (per modality), ``metrics`` (monitors)."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    metrics: dict[str, torch.Tensor] | None = None


class MMJepaPreTrainedModel(PreTrainedModel):
    config_class = MMJepaConfig
    config: MMJepaConfig
    base_model_prefix = "mmjepa"
    main_input_name = "pixel_values"
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
      context latents of all modalities present.
    """

    def __init__(self, config: MMJepaConfig):
        super().__init__(config)
        rope = config.position_embedding == "rope"
        self.modality_names = list(config.modalities)
        encoders = {}
        for name in self.modality_names:
            mod = get_modality(name)
            mcfg = config.modality_config(name)
            embed = mod.build_embed(mcfg, config.hidden_size, add_positions=not rope)
            encoders[name] = Encoder(embed, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                                     config.mlp_ratio, config.qkv_bias, config.layer_norm_eps, rope=rope)
        self.encoders = nn.ModuleDict(encoders)
        self.target_encoders = nn.ModuleDict(
            {name: Encoder(get_modality(name).build_embed(config.modality_config(name), config.hidden_size,
                                                          add_positions=not rope),
                           config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                           config.mlp_ratio, config.qkv_bias, config.layer_norm_eps, rope=rope)
             for name in self.modality_names}
        )
        self.target_encoders.requires_grad_(False)
        self.predictor = Predictor(config.hidden_size, config.predictor_hidden_size, config.predictor_num_hidden_layers,
                                   config.predictor_num_attention_heads,
                                   {name: enc.embed for name, enc in self.encoders.items()}, config.mlp_ratio,
                                   config.qkv_bias, config.layer_norm_eps, rope=rope)
        # masked-span prediction: predicted text latents -> vocabulary logits (modalities/text.py)
        self.text_readout = None
        if "text" in config.modalities and config.modality_config("text").readout:
            from .modalities.text import TextReadout

            self.text_readout = TextReadout(config.hidden_size, config.modality_config("text"), config.layer_norm_eps)
        self.post_init()

    # ------------------------------------------------------------------ helpers
    def _inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.modality_names:
            key = get_modality(name).input_key
            if batch.get(key) is not None:
                out[name] = batch[key]
        if not out:
            keys = [get_modality(n).input_key for n in self.modality_names]
            raise ValueError(f"no model input given: expected at least one of {keys}")
        return out

    def _valid(self, name: str, batch: dict[str, Any]) -> torch.Tensor | None:
        return get_modality(name).valid_tokens(batch, self.encoders[name].embed)

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
        """Latent prediction loss for a collated batch (model inputs + ``masks`` from the collator)."""
        inputs = self._inputs(batch)
        if masks is None:
            raise ValueError("the training forward needs `masks` from mmjepa's mask collator; "
                             "use model.embed(...) for embeddings")
        missing = sorted(set(masks) - set(inputs))
        if missing:
            raise ValueError(f"masks given for modalities without inputs: {missing}")
        D = self.config.hidden_size

        # context encoders on the visible tokens of every modality
        context = []
        for name, ms in masks.items():
            z = self.encoders[name](inputs[name], ms["context"], ms.get("context_valid"))  # (B, Kc, D)
            context.append((name, z, ms["context"], ms.get("context_valid")))

        losses, metrics = {}, {}
        for name, ms in masks.items():
            tidx = ms["target"]  # (B, M, Kt)
            B, M, Kt = tidx.shape
            with torch.no_grad():
                h = self.target_encoders[name](inputs[name], None, self._valid(name, batch))  # (B, N, D)
                h = gather_tokens(h, tidx.reshape(B, M * Kt))  # (B, M*Kt, D)
                h = F.layer_norm(h, (D,)).reshape(B * M, Kt, D)
            pred = self.predictor(context, name, tidx, ms.get("target_valid"))  # (B*M, Kt, D)
            tv = ms.get("target_valid")
            losses[name] = latent_loss(pred, h, self.config.loss_type, tv.reshape(B * M, Kt) if tv is not None else None)
            for k, v in collapse_metrics(pred, h).items():
                metrics[f"{name}/{k}"] = v
            if name == "text" and self.text_readout is not None:  # cross-entropy on the masked tokens
                readout_loss, metrics["text/mlm_acc"] = self.text_readout.loss(pred, inputs[name], tidx, tv)
        loss = torch.stack(list(losses.values())).mean()
        if self.config.sigreg_weight > 0:  # LeJEPA's anti-collapse regulariser on the context latents
            for name, z, _, cv in context:
                reg = sigreg(_sigreg_inputs(z, cv, self.config.sigreg_on), self.config.sigreg_num_slices)
                losses[f"{name}_sigreg"] = reg
                loss = loss + self.config.sigreg_weight * reg / len(context)
        if "text" in masks and self.text_readout is not None:
            losses["text_mlm"] = readout_loss
            loss = loss + self.text_readout.cfg.readout_weight * readout_loss
        return MMJepaOutput(loss=loss, losses=losses, metrics=metrics)

    def fill_spans(self, input_ids: torch.Tensor, span_mask: torch.Tensor | None = None, top_k: int = 5,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """Predict masked text tokens (see ``mmjepa.spans.fill_spans``): top-k ids/probs per masked position."""
        from .spans import fill_spans

        return fill_spans(self, input_ids, span_mask, top_k=top_k, **kwargs)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, use_target: bool = True, **batch: Any) -> dict[str, torch.Tensor]:
        """Token latents of every modality present: {name: (B, N, D)} (target encoders by default)."""
        encoders = self.target_encoders if use_target else self.encoders
        return {name: encoders[name](x, None, self._valid(name, batch)) for name, x in self._inputs(batch).items()}

    @torch.no_grad()
    def embed(self, use_target: bool = True, normalize: bool = True, **batch: Any) -> dict[str, torch.Tensor]:
        """Pooled embeddings {name: (B, D)}: mean over real tokens, L2-normalised by default."""
        out = {}
        for name, h in self.encode(use_target=use_target, **batch).items():
            pooled = masked_mean(h, self._valid(name, batch))  # (B, D)
            out[name] = F.normalize(pooled, dim=-1) if normalize else pooled
        return out


def _sigreg_inputs(z: torch.Tensor, valid: torch.Tensor | None, on: str) -> torch.Tensor:
    """Context latents (B, K, D) -> the rows SIGReg regularises: (B, D) sample means or (n, D) real tokens."""
    if on == "tokens":
        return z.reshape(-1, z.shape[-1]) if valid is None else z[valid]
    return masked_mean(z, valid)


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
