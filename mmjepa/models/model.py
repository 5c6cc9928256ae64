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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..layers import Transformer, gather_tokens, masked_mean
from ..modalities import get_modality
from ..objectives import PooledPrediction, build_objectives
from .backbone import BackboneTokens, HFBackboneEncoder, hf_config, resolve_backbones
from .config import MMJepaConfig
from .ema import ema_update, momentum_at
from .encoder import Encoder, encode_context, target_query_latents
from .monitors import collapse_monitors
from .predictor import Predictor
from .saving import SavingMixin


class EmbeddingCenters(nn.Module):
    """The running mean of each modality's pooled target embedding, subtracted before L2
    normalisation (a BatchNorm-style centre without a scale, as DINO centres its teacher).

    Mean-pooled latents share a large sample-independent component (the positions, the final
    norm's offset), which dominates cosine similarities: across modalities every pair then looks
    alike. Centred, the embeddings of one modality spread over the sphere and those of different
    modalities can be compared. Updated on every training batch (momentum ``momentum``; the first
    batch sets it), saved with the model.
    """

    def __init__(self, names: list[str], dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        for name in names:
            self.register_buffer(f"center_{name}", torch.zeros(dim))
            self.register_buffer(f"count_{name}", torch.zeros((), dtype=torch.long))

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, f"center_{name}")

    @torch.no_grad()
    def update(self, name: str, pooled: torch.Tensor | None) -> None:
        """Fold a batch of pooled embeddings (B, D) — or None when this process's batch lacks the
        modality — into the running centre: the batch mean over every process, as SyncBatchNorm's
        (so every process calls this for every modality, on every training step)."""
        center, count = self.get(name), getattr(self, f"count_{name}")
        total = torch.zeros(center.shape[0] + 1, device=center.device)
        if pooled is not None and len(pooled):
            total[:-1], total[-1] = pooled.detach().float().sum(0), float(pooled.shape[0])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
        if total[-1] == 0:  # no process held the modality
            return
        mean = (total[:-1] / total[-1]).to(center.dtype)
        center.copy_(mean if int(count) == 0 else self.momentum * center + (1 - self.momentum) * mean)
        count.add_(1)


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
        elif isinstance(module, Encoder) and module.mask_embed is not None:
            init.trunc_normal_(module.mask_embed, std=std)
        elif isinstance(module, Predictor):
            init.trunc_normal_(module.mask_token, std=std)
            if module.modality_embed is not None:
                init.trunc_normal_(module.modality_embed, std=std)
        if hasattr(module, "init_parameters"):  # modules with parameters of their own kind (objectives)
            module.init_parameters(std)
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
            elif isinstance(module, BackboneTokens):  # no parameters: transformers' init may skip it
                module.reset_buffers()
        if isinstance(self, MMJepaModel):  # the EMA targets start as exact copies of the encoders
            for name in self.encoders:
                src = self.encoders[name].state_dict()
                for key, t in self.target_encoders[name].state_dict(keep_vars=True).items():
                    init.copy_(t, src[key])


class MMJepaModel(SavingMixin, MMJepaPreTrainedModel):
    """Multimodal JEPA.

    - ``encoders[m]``: context encoder of modality m, sees only the visible tokens (or every token,
      the masked ones as a learned mask embedding, for the modalities in ``config.context_mask_tokens``);
    - ``target_encoders[m]``: its EMA copy (no gradients), sees all tokens; its layer-normed outputs
      are the prediction targets, and it provides the embeddings for downstream use;
    - ``predictor``: one narrow transformer that predicts target latents of any modality from the
      context latents of all modalities present;
    - ``objectives``: the losses (``mmjepa.objectives``), with their own parameters (e.g. a readout head).

    A modality named in ``config.backbones`` gets a Hugging Face model as its encoder
    (:class:`~mmjepa.models.backbone.HFBackboneEncoder`); ``MMJepaModel(config)`` builds it from
    its config with random weights, :meth:`load_backbones` (or :meth:`from_backbones`) loads the
    pretrained ones into the encoder and its target.
    """

    def __init__(self, config: MMJepaConfig):
        super().__init__(config)
        if not config.modalities:
            raise ValueError("the config names no modality: give MMJepaConfig(modalities={name: options, ...}), "
                             "e.g. {\"image\": {\"image_size\": 224, \"patch_size\": 16}}")
        self.modality_names = list(config.modalities)
        if config.backbones:
            resolve_backbones(config)  # the whole transformers config of each, saved with the model
        self.main_input_name = get_modality(self.modality_names[0]).input_key
        self.encoders = nn.ModuleDict({m: self._encoder(m) for m in self.modality_names})
        self.target_encoders = nn.ModuleDict({m: self._encoder(m) for m in self.modality_names})
        self.target_encoders.requires_grad_(False)
        c = config
        self.predictor = Predictor(c.hidden_size, c.predictor_hidden_size, c.predictor_num_hidden_layers,
                                   c.predictor_num_attention_heads,
                                   {m: enc.embed for m, enc in self.encoders.items()}, c.mlp_ratio,
                                   c.qkv_bias, c.layer_norm_eps, rope=c.position_embedding == "rope",
                                   modality_order=c.predictor_modalities, attention_backend=c.attention_backend,
                                   context_once=c.predictor_context_once)
        self.objectives = build_objectives(config)
        self.centers = EmbeddingCenters(self.modality_names, config.hidden_size)
        self.post_init()

    def _encoder(self, name: str) -> Encoder | HFBackboneEncoder:
        c, rope = self.config, self.config.position_embedding == "rope"
        if name in c.backbones:  # the plug-in's embed only lends its token grid (a narrow one: it is not kept)
            grid = get_modality(name).build_embed(c.modality_config(name), 4, add_positions=False)
            return HFBackboneEncoder(hf_config(c.backbones[name]), grid, c.hidden_size, name, c.modality_config(name))
        embed = get_modality(name).build_embed(c.modality_config(name), c.hidden_size, add_positions=not rope)
        return Encoder(embed, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.mlp_ratio, c.qkv_bias,
                       c.layer_norm_eps, rope=rope, attention_backend=c.attention_backend,
                       mask_token=name in c.context_mask_tokens)

    # ------------------------------------------------------------------ pretrained backbones
    @classmethod
    def from_backbones(cls, config: MMJepaConfig) -> "MMJepaModel":
        """A new model whose backbone encoders (``config.backbones``) start from their pretrained
        weights, context and target alike; everything else is initialised as ``MMJepaModel(config)``."""
        model = cls(config)
        model.load_backbones()
        return model

    @torch.no_grad()
    def load_backbones(self) -> list[str]:
        """Load each ``config.backbones`` entry's ``pretrained`` weights into its context encoder and
        copy that encoder into the EMA target (the projection to D, when there is one, too);
        returns the modalities loaded. Entries without ``pretrained`` keep their random init."""
        loaded = []
        for name, entry in self.config.backbones.items():
            if not entry.get("pretrained"):
                continue
            self.encoders[name].load_pretrained(entry["pretrained"])
            self.target_encoders[name].load_state_dict(self.encoders[name].state_dict())
            loaded.append(name)
        return loaded

    def train(self, mode: bool = True) -> "MMJepaModel":
        """As ``nn.Module.train``, but the EMA targets always run in eval mode: a backbone's dropout
        must not make the targets random."""
        super().train(mode)
        self.target_encoders.eval()
        return self

    # ------------------------------------------------------------------ helpers
    def token_embeddings(self, modality: str) -> torch.Tensor:
        """The token-embedding table (V, D) of a discrete-token modality's context encoder (what a
        read-out head with ``tie_embeddings`` uses as its output weight)."""
        embed = getattr(self.encoders[modality], "embed", None)
        table = embed.get_input_embeddings() if hasattr(embed, "get_input_embeddings") else None
        if table is None or table.weight.shape[-1] != self.config.hidden_size:
            raise ValueError(f"the {modality} encoder has no token-embedding table of the model's width "
                             f"({self.config.hidden_size}) to tie a read-out head to")
        return table.weight  # (V, D)

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
    def forward(self, masks: dict[str, dict[str, torch.Tensor]] | None = None,
                present: dict[str, torch.Tensor] | None = None, monitor: bool = True, return_dict: bool = True,
                **batch: Any) -> MMJepaOutput:
        """The weighted sum of the objectives on a collated batch (model inputs, ``masks`` and
        ``present`` from :class:`mmjepa.collate.MaskCollator`); ``monitor``: also compute the
        collapse monitors (the trainer asks on the steps it logs). A batch to which no objective
        applies (a contrastive model's batch without a pair) gives a zero loss and the metric
        ``skipped_batch`` = 1."""
        if masks is None:
            raise ValueError("the training forward needs `masks` from mmjepa's mask collator; "
                             "use model.embed(...) for embeddings")
        view = JepaView(self, batch, masks, present)
        loss, losses, metrics = 0.0, {}, {}
        for objective in self.objectives.values():
            out = objective(view)
            if out is None:
                continue
            loss = loss + objective.weight * out.loss
            losses.update(out.terms)
            metrics.update(out.metrics)
        if not losses:  # keeps the parameters in the graph (DDP), with no gradient
            loss = sum(p.reshape(-1)[0] for p in self.parameters() if p.requires_grad) * 0.0
            metrics["skipped_batch"] = torch.ones(())
        if monitor:
            metrics.update(collapse_monitors(view))
        if self.training:
            for m in self.modality_names:
                self.centers.update(m, view.pooled_target(m) if m in view.masks else None)
        return MMJepaOutput(loss=loss, losses=losses, metrics=metrics)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, use_target: bool = True, **batch: Any) -> dict[str, torch.Tensor]:
        """Token latents of every modality present: {name: (B, N, D)} (target encoders by default)."""
        encoders = self.target_encoders if use_target else self.encoders
        return {name: encoders[name](x, None, get_modality(name).valid_tokens(batch))
                for name, x in self.model_inputs(batch).items()}

    @torch.no_grad()
    def embed(self, use_target: bool = True, normalize: bool = True, center: bool = True,
              **batch: Any) -> dict[str, torch.Tensor]:
        """Embeddings {name: (B, D)} in the shared space: each plug-in's pooling (the mean over real
        tokens), minus the modality's running centre (``center``, see :class:`EmbeddingCenters`),
        L2-normalised (``normalize``)."""
        self.check_inputs(batch)
        out = {}
        for name, h in self.encode(use_target=use_target, **batch).items():
            mod = get_modality(name)
            pooled = mod.pool(h, mod.valid_tokens(batch), self.config.modality_config(name))  # (B, D)
            if center:
                pooled = pooled - self.centers.get(name)
            out[name] = F.normalize(pooled, dim=-1) if normalize else pooled
            if not bool(torch.isfinite(out[name]).all()):
                raise ValueError(f"{name}: the embeddings are not finite (inputs far outside the range the "
                                 "processor produces?)")
        return out

    def check_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The model inputs of ``batch`` (see :meth:`model_inputs`), checked as a caller of
        :meth:`embed` may get them wrong: tensors, non-empty, finite, with validity masks that are
        tensors marking at least one real token per sample; ValueError / TypeError otherwise."""
        inputs = self.model_inputs(batch)
        for name, x in inputs.items():
            mod = get_modality(name)
            key = mod.input_key
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{key} must be a torch.Tensor (as the processor returns), got {type(x).__name__}")
            if x.dim() == 0 or x.shape[0] == 0:
                raise ValueError(f"{key} must hold a batch of at least one sample, got shape {tuple(x.shape)}")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{key} holds NaN or infinite values")
            try:
                valid = mod.valid_tokens(batch)
            except AttributeError:
                valid = "?"
            if valid is None:
                continue
            if not isinstance(valid, torch.Tensor) or valid.dim() != 2 or valid.shape[0] != x.shape[0]:
                raise ValueError(f"the {name} token validity mask must be a (B={x.shape[0]}, N) tensor, got "
                                 f"{tuple(valid.shape) if isinstance(valid, torch.Tensor) else type(valid).__name__}")
            if not bool(valid.any(1).all()):
                raise ValueError(f"every {name} sample needs at least one real token (a row of its validity mask "
                                 "is all False)")
        return inputs

    @torch.no_grad()
    def predict_embedding(self, target: str, normalize: bool = True, **batch: Any) -> torch.Tensor:
        """The pooled embedding of modality ``target`` predicted from the other modalities in
        ``batch`` (every token of each, through the context encoders and the ``pooled``
        objective's query) -> (B, D), L2-normalised by default: retrieval by prediction, to compare
        with ``embed(...)[target]`` of a gallery."""
        query = next((o.query for o in self.objectives.values() if isinstance(o, PooledPrediction)), None)
        if query is None:
            raise ValueError("this model has no pooled objective: it cannot predict embeddings (train it with "
                             "objectives.pooled)")
        if target not in self.modality_names:
            raise ValueError(f"this model has no {target!r} modality (it has {self.modality_names})")
        contexts = []
        for name, x in self.check_inputs(batch).items():
            if name == target:
                continue
            valid = get_modality(name).valid_tokens(batch)
            z = self.encoders[name](x, None, valid)  # (B, N, D)
            idx = torch.arange(z.shape[1], device=z.device).expand(z.shape[0], -1)
            contexts.append((name, z, idx, valid))
        if not contexts:
            raise ValueError(f"predicting {target} embeddings needs inputs of another modality")
        pred = self.predictor.predict_pooled(contexts, target, query)  # (B, D)
        return F.normalize(pred, dim=-1) if normalize else pred


class JepaView:
    """One batch as the objectives see it (``mmjepa.objectives.LatentView``): context latents,
    targets and predictions of each masked modality, computed on first request and cached.

    A modality's tensors hold only the samples that have it (``present[m]``: their positions in the
    batch); :meth:`aligned_context` lines a modality's context up with any list of samples.

    Several mask sets per sample (``config.mask_sets`` = R > 1, data2vec 2.0's multi-mask
    training): the collator's masks hold R rows per sample (row b*R + r: set r of sample b). The
    target encoder still runs once per sample; the context encoder (embedding once, then R
    gathers) and the predictor run on all Bm*R rows, computed once and cached. Objectives opt in to
    the sets with ``all_sets=True`` (:meth:`targets`, :meth:`predictions`: Bm*R*M rows, ordered
    sample, set, group); everything else — ``masks``, :meth:`context`, :meth:`aligned_context`,
    the default :meth:`targets` and :meth:`predictions` — shows the first set only, i.e. the
    unrepeated batch that objectives unaware of mask sets expect.
    """

    def __init__(self, model: MMJepaModel, batch: dict[str, Any], masks: dict[str, dict[str, torch.Tensor]],
                 present: dict[str, torch.Tensor] | None = None):
        self.model, self.config, self.batch = model, model.config, batch
        self.predictor = model.predictor
        self.inputs = model.model_inputs(batch)
        missing = sorted(set(masks) - set(self.inputs))
        if missing:
            raise ValueError(f"masks given for modalities without inputs: {missing}")
        self.mask_sets = R = model.config.mask_sets
        for m, ms in masks.items():
            if ms["context"].shape[0] != self.inputs[m].shape[0] * R:
                raise ValueError(f"{m}: the masks hold {ms['context'].shape[0]} rows for {self.inputs[m].shape[0]} "
                                 f"samples, expected {R} per sample (mask_sets={R}): build the collator from this "
                                 "model's config (MaskCollator.from_config)")
        self.all_masks = masks  # (Bm*R, ...) per modality
        self.masks = masks if R == 1 else {m: {k: v[::R] for k, v in ms.items()} for m, ms in masks.items()}
        dev = next(iter(self.inputs.values())).device
        self.present = {m: (present[m].to(dev) if present is not None and m in present
                            else torch.arange(x.shape[0], device=dev)) for m, x in self.inputs.items()}
        self.batch_size = max(int(p.max()) + 1 for p in self.present.values() if len(p))
        self._context: dict[str, tuple] = {}
        self._target_raw: dict[str, torch.Tensor] = {}
        self._encoded: dict[str, torch.Tensor] = {}
        self._targets: dict[str, tuple] = {}
        self._predictions: dict[str, torch.Tensor] = {}

    def valid(self, modality: str) -> torch.Tensor | None:
        return get_modality(modality).valid_tokens(self.batch)

    def rows(self, modality: str, samples: torch.Tensor) -> torch.Tensor:
        """Positions of ``samples`` (batch indices) in ``modality``'s tensors; -1 where absent."""
        inv = torch.full((self.batch_size,), -1, dtype=torch.long, device=samples.device)
        p = self.present[modality]
        inv[p] = torch.arange(len(p), device=samples.device)
        return inv[samples]

    def _first_set(self, t: torch.Tensor | None, per_set: int = 1) -> torch.Tensor | None:
        """The rows of mask set 0 of a tensor of Bm*R*per_set rows (sample, set, then per_set)."""
        if t is None or self.mask_sets == 1:
            return t
        return t.unflatten(0, (-1, self.mask_sets, per_set))[:, 0].flatten(0, 1)

    def context_sets(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The context latents of every mask set: z (Bm*R, Kc, D), idx (Bm*R, Kc), valid or None."""
        if modality not in self._context:
            ms = self.all_masks[modality]
            self._context[modality] = encode_context(  # (Bm*R, Kc, D), (Bm*R, Kc), (Bm*R, Kc) or None
                self.model.encoders[modality], self.inputs[modality], ms["context"], ms.get("context_valid"),
                self.valid(modality), self.mask_sets)
        return self._context[modality]

    def context(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return tuple(self._first_set(t) for t in self.context_sets(modality))  # (Bm, Kc, D) ...

    def aligned_context(self, modality: str, samples: torch.Tensor,
                        full: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``modality``'s context latents for ``samples`` (R,) batch indices: z (R, Kc, D), idx
        (R, Kc), valid (R, Kc) — all-False on the rows of samples that lack the modality. ``full``:
        the unmasked view (:meth:`encoded`, every token) instead of the masked context."""
        if full:
            z, valid = self.encoded(modality), self.valid(modality)
            idx = torch.arange(z.shape[1], device=z.device).expand(z.shape[0], -1)
            return self._align(modality, samples, z, idx, valid, 1)
        return self._align(modality, samples, *self.context(modality), 1)

    def _align(self, modality: str, samples: torch.Tensor, z: torch.Tensor, idx: torch.Tensor,
               valid: torch.Tensor | None, sets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows of ``modality``'s (Bm*sets, ...) tensors for ``samples``, ``sets`` rows per sample."""
        p = self.present[modality]
        if len(p) == len(samples) and torch.equal(p, samples):
            return z, idx, valid
        rows = self.rows(modality, samples)
        have = rows >= 0
        r = rows.clamp_min(0)
        if sets > 1:  # sample row r -> its set rows r*sets .. r*sets + sets - 1
            r = (r[:, None] * sets + torch.arange(sets, device=r.device)).reshape(-1)
            have = have.repeat_interleave(sets)
        v = have[:, None].expand(-1, idx.shape[1]) if valid is None else valid[r] & have[:, None]
        return z[r], idx[r], v

    def encoded(self, modality: str) -> torch.Tensor:
        """The context encoder on every token (Bm, N, D) (with gradients): the unmasked view."""
        if modality not in self._encoded:
            self._encoded[modality] = self.model.encoders[modality](self.inputs[modality], None, self.valid(modality))
        return self._encoded[modality]

    def center(self, modality: str) -> torch.Tensor:
        """The running centre of ``modality``'s pooled embeddings (D,) (see :class:`EmbeddingCenters`)."""
        return self.model.centers.get(modality)

    def token_embeddings(self, modality: str) -> torch.Tensor:
        """The context encoder's token-embedding table (V, D) of ``modality``, with gradients."""
        return self.model.token_embeddings(modality)

    def pooled_target(self, modality: str) -> torch.Tensor:
        """The mean of the EMA target latents over real tokens (Bm, D), as ``embed`` pools them."""
        return masked_mean(self.target_latents(modality), self.valid(modality))

    def target_latents(self, modality: str) -> torch.Tensor:
        """The EMA target encoder's latents of every token (Bm, N, D), no gradient, not normalised."""
        if modality not in self._target_raw:
            with torch.no_grad():
                self._target_raw[modality] = self.model.target_encoders[modality](
                    self.inputs[modality], None, self.valid(modality))
        return self._target_raw[modality]

    def targets(self, modality: str, all_sets: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer-normed target latents at the target indices (Bm*M, Kt, D) and their validity; with
        ``all_sets``, of every mask set: (Bm*R*M, Kt, D), rows ordered sample, set, group."""
        if modality not in self._targets:
            tidx = self.all_masks[modality]["target"]  # (Bm*R, M, Kt)
            BR, M, Kt = tidx.shape
            B, D = BR // self.mask_sets, self.config.hidden_size
            with torch.no_grad():  # one target pass per sample: the R sets gather from the same latents
                h = gather_tokens(self.target_latents(modality), tidx.reshape(B, -1))  # (B, R*M*Kt, D)
                h = F.layer_norm(h, (D,)).reshape(BR * M, Kt, D)
            tv = self.all_masks[modality].get("target_valid")
            self._targets[modality] = (h, None if tv is None else tv.reshape(BR * M, Kt))
        h, tv = self._targets[modality]
        if all_sets:
            return h, tv
        M = self.masks[modality]["target"].shape[1]
        return self._first_set(h, M), self._first_set(tv, M)

    def query_latents(self, modality: str, all_sets: bool = False) -> torch.Tensor | None:
        """For a modality in ``config.context_mask_tokens``: the context encoder's latents at the
        target positions (it saw them as mask tokens), (Bm*M, Kt, D) (``all_sets``: (Bm*R*M, Kt, D)),
        which start the predictor's queries and are added to its output; None otherwise."""
        if modality not in self.config.context_mask_tokens:
            return None
        ql = target_query_latents(self.context_sets(modality)[0], self.all_masks[modality]["target"])
        return ql if all_sets else self._first_set(ql, self.masks[modality]["target"].shape[1])

    def predictions(self, modality: str, all_context: bool = False, all_sets: bool = False) -> torch.Tensor:
        """Intra-modal predictions: the target blocks of ``modality`` from its own context (or, with
        ``all_context``, from the context of every modality each sample holds), (Bm*M, Kt, D); with
        ``all_sets``, of every mask set (Bm*R*M, Kt, D), each set from its own context (another
        modality's set r for set r)."""
        key = (modality, all_context)
        if key not in self._predictions:
            samples = self.present[modality]
            mods = list(self.masks) if all_context else [modality]
            contexts = [(m, *self._align(m, samples, *self.context_sets(m), self.mask_sets)) for m in mods]
            ms = self.all_masks[modality]
            self._predictions[key] = self.model.predictor(contexts, modality, ms["target"], ms.get("target_valid"),
                                                          self.query_latents(modality, all_sets=True))  # (Bm*R*M, Kt, D)
        pred = self._predictions[key]
        return pred if all_sets else self._first_set(pred, self.masks[modality]["target"].shape[1])


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
