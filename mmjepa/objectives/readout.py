"""Token readout: a BERT-style head turns predicted latents of a discrete-token modality back into
vocabulary logits, trained with cross-entropy on the masked tokens (masked-span prediction).

Works for any modality whose options have a ``vocab_size`` and whose model input holds token ids.

``context`` says what the predictor sees when it predicts the masked tokens the head reads out:

- ``own`` (default): the modality's own visible tokens (``view.predictions``), as intra-modal
  prediction does; term ``readout/<m>``, monitor ``<m>/readout_acc``.
- ``all``: the modality's own visible tokens plus the *full* view of every other modality the
  sample holds (the context encoder on all their tokens, shared with the cross-modal and
  contrastive objectives), so the head learns to use, say, the picture a caption describes. This is
  the context ``fill_spans`` gives the predictor when it is passed another modality's input. A sample
  that holds no other modality is predicted from its own context (all it has). Term
  ``readout/<m>/conditioned``, monitor ``<m>/readout_acc_conditioned``.
- ``both``: the two cross-entropies, each a mean over the batch's masked tokens, averaged:
  ``loss = (readout/<m> + readout/<m>/conditioned) / 2``. Per masked token that is
  ``(own + conditioned) / 2`` for a sample holding another modality and its own-context term, once,
  for a sample holding none (its two predictions are the same), so every masked token weighs the
  same. Both terms and both monitors are logged (``all`` logs the own ones too, for comparison).

``tie_embeddings``: the head's output layer uses the context encoder's token-embedding table of the
modality (``LatentView.token_embeddings``) as its weight, plus a bias of its own, as BERT and
ModernBERT tie their decoder. The untied output layer costs vocabulary x width parameters (at a
2,000-token vocabulary and width 128, 256,000: a seventh of a 1.75 M-parameter model); tied, those
parameters can go to encoder or predictor layers instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import LatentView, Objective, ObjectiveConfig, ObjectiveOutput, check_choice, register_objective
from .cross import context_groups

CONTEXTS = ("own", "all", "both")


@dataclass
class ReadoutConfig(ObjectiveConfig):
    """``modality``: whose tokens to read out; ``stop_grad``: train the head on detached
    predictions, so only the latent objective shapes the encoder and predictor; ``context``: the
    predictor's context for the read-out predictions, ``own`` | ``all`` | ``both``;
    ``tie_embeddings``: the output layer shares the modality's token-embedding table (module docstring)."""

    modality: str = ""
    stop_grad: bool = False
    context: str = "own"
    tie_embeddings: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.modality:
            raise ValueError("modality must name the modality whose tokens are read out")
        check_choice("context", self.context, CONTEXTS)


class ReadoutHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary logits. ``tied``: no output weight of its own (only
    a bias); :meth:`forward` is then given the token-embedding table (V, D) to use as that weight."""

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-6, tied: bool = False):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = None if tied else nn.Linear(dim, vocab_size)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size)) if tied else None

    def init_parameters(self, std: float) -> None:
        if self.decoder_bias is not None:
            nn.init.zeros_(self.decoder_bias)

    def forward(self, latents: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(latents)))  # (..., D)
        if self.decoder is not None:
            return self.decoder(h)  # (..., V)
        if embeddings is None:
            raise ValueError("this read-out head is tied to the token embeddings: pass them (V, D)")
        return F.linear(h, embeddings, self.decoder_bias)  # (..., V)


@register_objective
class TokenReadout(Objective):
    """Cross-entropy of the masked tokens of ``modality`` read out of the predicted latents; terms
    ``readout/<modality>`` (own context) and ``readout/<modality>/conditioned`` (with the sample's
    other modalities), monitors ``<modality>/readout_acc`` and ``<modality>/readout_acc_conditioned``
    (top-1 on the masked tokens). See the module docstring for ``context``."""

    name = "readout"
    config_class = ReadoutConfig

    def __init__(self, cfg: ReadoutConfig, model_config: Any):
        super().__init__(cfg, model_config)
        self.validate(cfg, model_config)
        self.modality = cfg.modality
        vocab = model_config.modality_config(cfg.modality).vocab_size
        self.head = ReadoutHead(model_config.hidden_size, vocab, model_config.layer_norm_eps, tied=cfg.tie_embeddings)

    @classmethod
    def validate(cls, cfg: ReadoutConfig, model_config: Any) -> None:
        if cfg.modality not in model_config.modalities:
            raise ValueError(f"readout: the model has no {cfg.modality!r} modality (it has {list(model_config.modalities)})")
        if not hasattr(model_config.modality_config(cfg.modality), "vocab_size"):
            raise ValueError(f"readout: the {cfg.modality} modality has no vocab_size (no discrete tokens)")
        if cfg.tie_embeddings and cfg.modality in (getattr(model_config, "backbones", None) or {}):
            raise ValueError(f"readout: tie_embeddings needs the {cfg.modality} encoder's own token table of the "
                             "model's width; a pretrained backbone's is not (set tie_embeddings: false)")

    def output_table(self, source: Any) -> torch.Tensor | None:
        """The token table (V, D) a tied head scores against, from ``source`` (the model or a
        ``LatentView``: both have ``token_embeddings``); None for an untied head."""
        return source.token_embeddings(self.modality) if self.cfg.tie_embeddings else None

    def logits(self, latents: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted latents (..., D) -> vocabulary logits (..., V); ``embeddings``: the token table
        (V, D) a tied head needs (:meth:`output_table`)."""
        return self.head(latents, embeddings)

    def labels(self, view: LatentView) -> torch.Tensor:
        """The token ids at the target indices (Bm*M*Kt,), sample-major; -100 on padded targets."""
        m = self.modality
        tidx = view.masks[m]["target"]  # (Bm, M, Kt)
        B, M, Kt = tidx.shape
        labels = torch.gather(view.inputs[m], 1, tidx.reshape(B, M * Kt)).reshape(B * M * Kt)
        valid = view.masks[m].get("target_valid")
        if valid is not None:
            labels = labels.masked_fill(~valid.reshape(-1), -100)
        return labels

    def conditioned_predictions(self, view: LatentView) -> torch.Tensor:
        """Predictions of the target indices of ``modality`` from its own masked context plus the
        full view of every other modality each sample holds, (Bm*M, Kt, D) sample-major as
        ``view.predictions``; a sample holding no other modality gets its own-context prediction."""
        m = self.modality
        tidx = view.masks[m]["target"]  # (Bm, M, Kt)
        tvalid = view.masks[m].get("target_valid")  # (Bm, M, Kt) or None
        Bm, M, Kt = tidx.shape
        pred = view.predictions(m).unflatten(0, (Bm, M))  # (Bm, M, Kt, D): own context (cached; kept for lone samples)
        ql = view.query_latents(m)  # (Bm*M, Kt, D) or None
        for others, group in context_groups(view, view.present[m], m):
            rows = view.rows(m, group)  # (R,)
            contexts = [(m, *view.aligned_context(m, group)),
                        *((o, *view.aligned_context(o, group, full=True)) for o in others)]
            q = None if ql is None else ql.unflatten(0, (Bm, M))[rows].flatten(0, 1)  # (R*M, Kt, D)
            p = view.predictor(contexts, m, tidx[rows], None if tvalid is None else tvalid[rows], q)  # (R*M, Kt, D)
            pred = pred.index_put((rows,), p.unflatten(0, (len(rows), M)))
        return pred.flatten(0, 1)  # (Bm*M, Kt, D)

    def read(self, pred: torch.Tensor, labels: torch.Tensor,
             embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted latents (Bm*M, Kt, D) -> (mean cross-entropy over the real targets, top-1 accuracy)."""
        if self.cfg.stop_grad:  # a tied table is not shaped by the read-out either
            pred = pred.detach()
            embeddings = None if embeddings is None else embeddings.detach()
        logits = self.head(pred, embeddings).reshape(labels.shape[0], -1).float()  # (Bm*M*Kt, V)
        ce = F.cross_entropy(logits, labels, ignore_index=-100)
        keep = labels != -100
        acc = (logits.argmax(-1)[keep] == labels[keep]).float().mean()
        return ce, acc.detach()

    def forward(self, view: LatentView) -> ObjectiveOutput | None:
        m = self.modality
        if m not in view.masks:
            return None
        labels = self.labels(view)  # (Bm*M*Kt,)
        emb = self.output_table(view)  # (V, D) or None
        ce, acc = self.read(view.predictions(m), labels, emb)  # from the modality's own context
        terms, metrics = {f"readout/{m}": ce}, {f"{m}/readout_acc": acc}
        if self.cfg.context == "own":
            return ObjectiveOutput(ce, terms, metrics)
        ce_all, acc_all = self.read(self.conditioned_predictions(view), labels, emb)
        terms[f"readout/{m}/conditioned"] = ce_all
        metrics[f"{m}/readout_acc_conditioned"] = acc_all
        loss = ce_all if self.cfg.context == "all" else (ce + ce_all) / 2
        return ObjectiveOutput(loss, terms, metrics)
