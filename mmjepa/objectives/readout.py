"""Token readout: a BERT-style head turns predicted latents of a discrete-token modality back into
vocabulary logits, trained with cross-entropy on the masked tokens (masked-span prediction).

Works for any modality whose options have a ``vocab_size`` and whose model input holds token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import LatentView, Objective, ObjectiveConfig, ObjectiveOutput, register_objective


@dataclass
class ReadoutConfig(ObjectiveConfig):
    """``modality``: whose tokens to read out; ``stop_grad``: train the head on detached
    predictions, so only the latent objective shapes the encoder and predictor."""

    modality: str = ""
    stop_grad: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.modality:
            raise ValueError("modality must name the modality whose tokens are read out")


class ReadoutHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary logits."""

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-6):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, vocab_size)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(latents))))  # (..., V)


@register_objective
class TokenReadout(Objective):
    """Cross-entropy of the masked tokens of ``modality`` read out of the predicted latents; term
    ``readout/<modality>``, monitor ``<modality>/readout_acc`` (top-1 on the masked tokens)."""

    name = "readout"
    config_class = ReadoutConfig

    def __init__(self, cfg: ReadoutConfig, model_config: Any):
        super().__init__(cfg, model_config)
        self.validate(cfg, model_config)
        self.modality = cfg.modality
        vocab = model_config.modality_config(cfg.modality).vocab_size
        self.head = ReadoutHead(model_config.hidden_size, vocab, model_config.layer_norm_eps)

    @classmethod
    def validate(cls, cfg: ReadoutConfig, model_config: Any) -> None:
        if cfg.modality not in model_config.modalities:
            raise ValueError(f"readout: the model has no {cfg.modality!r} modality (it has {list(model_config.modalities)})")
        if not hasattr(model_config.modality_config(cfg.modality), "vocab_size"):
            raise ValueError(f"readout: the {cfg.modality} modality has no vocab_size (no discrete tokens)")

    def logits(self, latents: torch.Tensor) -> torch.Tensor:
        """Predicted latents (..., D) -> vocabulary logits (..., V)."""
        return self.head(latents)

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        m = self.modality
        if m not in view.masks:
            return None
        pred = view.predictions(m)  # (B*M, Kt, D), sample-major (from the modality's own context)
        tidx = view.masks[m]["target"]  # (B, M, Kt)
        B, M, Kt = tidx.shape
        labels = torch.gather(view.inputs[m], 1, tidx.reshape(B, M * Kt)).reshape(B * M * Kt)
        valid = view.masks[m].get("target_valid")
        if valid is not None:
            labels = labels.masked_fill(~valid.reshape(-1), -100)
        if self.cfg.stop_grad:
            pred = pred.detach()
        logits = self.head(pred).reshape(B * M * Kt, -1).float()  # (B*M*Kt, V)
        ce = F.cross_entropy(logits, labels, ignore_index=-100)
        keep = labels != -100
        acc = (logits.argmax(-1)[keep] == labels[keep]).float().mean()
        return ObjectiveOutput(ce, {f"readout/{m}": ce}, {f"{m}/readout_acc": acc.detach()})
