"""Hugging Face transformers models as modality encoders (a pretrained BERT, ViT, I-JEPA, AST ...).

``MMJepaConfig(backbones={m: {"pretrained": ref, "config": {...}}})`` replaces modality m's own
encoder by a transformers model. The context encoder and its EMA target copy are both
:class:`HFBackboneEncoder`\\ s; :meth:`mmjepa.MMJepaModel.load_backbones` (called by the trainer on a
fresh run, and by :meth:`mmjepa.MMJepaModel.from_backbones`) loads the pretrained weights into both.

An entry holds:

- ``pretrained``: a folder, a Hub id or ``pkg:PACKAGE/sub/folder`` (a folder inside an installed
  Python package) holding the model's ``config.json`` and weights;
- ``config``: the transformers config as a dict. With ``pretrained`` its keys override the
  pretrained config's (``{hidden_dropout_prob: 0.0}``); resolving the entry
  (:func:`resolve_backbones`, done when the model is built) fills in the whole dict, so that a
  saved mmjepa model rebuilds the backbone from its own ``config.json`` and weights, without the
  original folder. Without ``pretrained`` it must name ``model_type``: a randomly initialised
  model of that architecture (transformers' own init).

The wrapper runs the model's parts itself, so that the context encoder never sees masked tokens:

1. ``embeddings`` on the whole input (token + position embeddings, or patches + positions, with
   the class/distillation/register tokens in front; ELECTRA's ``embeddings_project`` after it). It
   must work token by token (BERT, RoBERTa, DistilBERT, ELECTRA, ViT, DeiT, I-JEPA, AST, DINOv2:
   per-token sums and norms), which makes gathering its output the same as embedding only the
   visible tokens at their original positions;
2. the visible tokens ``keep`` are gathered, the prefix tokens kept in front;
3. the layer stack (``layers``, ``encoder.layer``, ``encoder.layers`` or ``transformer.layer``) with transformers'
   bidirectional attention mask for the padding (``valid``) — the mask the model's own forward
   builds, for whichever attention implementation it runs;
4. the final norm when the model has one (``layernorm`` ...); the prefix tokens are dropped and a
   Linear projects to the shared width D when the model's width differs.

Its ``embed`` attribute (:class:`BackboneTokens`) gives the predictor the plug-in's token grid
(``num_tokens``, ``coords``, ``grid_coords()``, ``position_table(dim)``): the backbone's tokens
must be the plug-in's tokens, which :class:`HFBackboneEncoder` checks when it is built (patch grid,
sequence length against ``max_position_embeddings``, vocabulary size).

Not supported: models whose embeddings mix neighbouring tokens (a convolutional stem over
waveforms or frames: wav2vec 2, HuBERT, Whisper) — gathering after them would leak the masked
tokens into the context — and models that need positions inside every layer (rotary: ModernBERT,
RoFormer).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from ..layers import gather_tokens
from ..paths import local_or_hub

ENTRY_KEYS = ("pretrained", "config")
# keys of a transformers config dict that say nothing about the architecture
_DROPPED_KEYS = ("transformers_version", "_name_or_path", "id2label", "label2id", "architectures")
# the layer stack and the final norm, by the attribute names transformers' encoders use
_LAYER_PATHS = ("layers", "encoder.layer", "encoder.layers", "transformer.layer", "layer")
_NORM_NAMES = ("layernorm", "final_layer_norm", "post_layernorm", "norm", "ln_post")
_PREFIX_TOKENS = ("cls_token", "distillation_token")  # parameters of the embeddings, one token each, with positions
# inputs a model family takes in another layout than the plug-in's: AST reads (B, frames, mel bins) and
# patchifies the transposed (B, 1, mel bins, frames) grid, frequency-major as mmjepa's (B, F, T) features
INPUT_ADAPTERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "audio-spectrogram-transformer": lambda x: x.transpose(1, 2),
}


# ----------------------------------------------------------------------------- options
def check_entry(name: str, entry: Any) -> None:
    """Raise ValueError when one ``backbones`` entry is malformed (no file is read)."""
    if not isinstance(entry, dict):
        raise ValueError(f"backbones.{name}: expected a mapping with {' and/or '.join(ENTRY_KEYS)}, got {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError(f"backbones.{name}: unknown key(s) {', '.join(unknown)}; an entry takes "
                         f"{', '.join(ENTRY_KEYS)}")
    ref, cfg = entry.get("pretrained"), entry.get("config")
    if ref is not None and (not isinstance(ref, str) or not ref):
        raise ValueError(f"backbones.{name}.pretrained: expected a folder or Hub id, got {ref!r}")
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"backbones.{name}.config: expected a mapping (a transformers config), got {cfg!r}")
    if not ref and not (cfg or {}).get("model_type"):
        raise ValueError(f"backbones.{name}: give `pretrained` (a folder or Hub id) or a `config` with its model_type")


def hf_config(entry: dict[str, Any]) -> PreTrainedConfig:
    """The transformers config of an entry: its full ``config`` (it names ``model_type``), else the
    pretrained one's ``config.json`` with the entry's keys set over it."""
    overrides = dict(entry.get("config") or {})
    if overrides.get("model_type"):
        kind = overrides.pop("model_type")
        return AutoConfig.for_model(kind, **overrides)
    ref = local_or_hub(entry["pretrained"], "pretrained")
    try:
        cfg = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load the config of {ref!r}: {str(err).splitlines()[0]}") from None
    cfg.update(overrides)
    return cfg


def config_dict(cfg: PreTrainedConfig) -> dict[str, Any]:
    """A transformers config -> the JSON-able dict stored in ``backbones[m]["config"]``."""
    out = cfg.to_dict()
    for key in _DROPPED_KEYS:
        out.pop(key, None)
    return out


def resolve_backbones(config: Any) -> Any:
    """Fill in each backbone entry's whole transformers config (reading ``config.json`` of its
    ``pretrained`` folder when the entry does not hold one yet) and check it against the modality's
    options; returns ``config`` (changed in place). Raises ValueError naming the entry."""
    for name, entry in config.backbones.items():
        try:
            check_entry(name, entry)
            cfg = hf_config(entry)
        except ValueError as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith("backbones.") else f"backbones.{name}: {msg}") from None
        entry["config"] = config_dict(cfg)
        check_options(name, cfg, config.modality_config(name))
    return config


def check_options(name: str, cfg: PreTrainedConfig, options: Any) -> None:
    """Options the plug-in and the transformers config both have must agree (``vocab_size``,
    ``pad_token_id``): the plug-in's tokenizer must be the backbone's."""
    for key in ("vocab_size", "pad_token_id"):
        mine, theirs = getattr(options, key, None), getattr(cfg, key, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"backbones.{name}: modalities.{name}.{key} is {mine} but the {cfg.model_type} backbone's "
                             f"is {theirs}: use the backbone's tokenizer and set {key}: {theirs}")


# ----------------------------------------------------------------------------- the token grid
class BackboneTokens(nn.Module):
    """The plug-in's token grid for a backbone encoder, as the predictor reads it from an embed:
    ``num_tokens``, ``coords`` (N, ndim), ``grid_coords()`` and ``position_table(dim)`` (the
    plug-in's fixed sin-cos table). Holds no parameters: the positions the encoder adds are the
    backbone's own."""

    def __init__(self, plugin_embed: nn.Module):
        super().__init__()
        self.num_tokens = int(plugin_embed.num_tokens)
        self.grid = getattr(plugin_embed, "grid", None)
        self._grid_fn = plugin_embed.grid_coords  # plain callables: the plug-in's embed is not a submodule
        self._table_fn = plugin_embed.position_table
        self.register_buffer("coords", self._grid_fn(), persistent=False)  # (N, ndim)

    def grid_coords(self) -> torch.Tensor:
        return self._grid_fn()

    def position_table(self, dim: int) -> torch.Tensor:
        return self._table_fn(dim)

    def reset_buffers(self) -> None:
        self.coords = self._grid_fn().to(self.coords.device)


# ----------------------------------------------------------------------------- the encoder
class HFBackboneEncoder(nn.Module):
    """A transformers model as an mmjepa encoder: ``forward(inputs, keep, valid) -> (B, K, D)``.

    Args:
        cfg: the transformers config of the model (:func:`hf_config`).
        plugin_embed: the modality plug-in's embed, for its token grid (see :class:`BackboneTokens`).
        dim: the shared latent width D; a Linear projects to it when the model's width differs.
        name: the modality, for error messages.
        options: the modality's options (its dataclass), checked against the model when given.
    """

    def __init__(self, cfg: PreTrainedConfig, plugin_embed: nn.Module, dim: int, name: str = "",
                 options: Any = None):
        super().__init__()
        self.name = name
        model = AutoModel.from_config(copy.deepcopy(cfg))
        if getattr(model, "pooler", None) is not None:  # unused: an mmjepa encoder returns tokens
            model.pooler = None
        self.backbone = model
        self.embed = BackboneTokens(plugin_embed)
        self.model_type = model.config.model_type
        self._layers_path = next((p for p in _LAYER_PATHS if isinstance(_get(model, p), nn.ModuleList)), None)
        if getattr(model, "embeddings", None) is None or self._layers_path is None:
            raise ValueError(f"backbones.{name}: {type(model).__name__} is not an encoder mmjepa can run (it needs "
                             f"`embeddings` and a layer list `layers` or `encoder.layer`)")
        self._norm_name = next((n for n in _NORM_NAMES if isinstance(getattr(model, n, None), nn.Module)), None)
        emb = model.embeddings
        if isinstance(getattr(emb, "mask_token", None), nn.Parameter):  # for masked image modelling: never used
            emb.mask_token.requires_grad_(False)  # here (masked tokens are left out), so not trained (and DDP-safe)
        self.num_pos_prefix = sum(getattr(emb, t, None) is not None for t in _PREFIX_TOKENS)
        registers = getattr(emb, "register_tokens", None)
        self.num_prefix = self.num_pos_prefix + (registers.shape[1] if registers is not None else 0)
        self.width = int(model.config.hidden_size)
        self.proj = nn.Linear(self.width, dim) if self.width != dim else None
        self.vocab_size = getattr(model.config, "vocab_size", None) if isinstance(
            getattr(emb, "word_embeddings", None), nn.Embedding) else None
        self.gradient_checkpointing = False
        if options is not None:
            self._check_inputs(options)
        self._check_grid(plugin_embed)

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, options: Any) -> None:
        """A model that looks token ids up (``embeddings.word_embeddings``) for a modality of token
        ids (options with a ``vocab_size``), one that reads signals for the others."""
        takes_ids = hasattr(options, "vocab_size")
        if takes_ids and self.vocab_size is None:
            raise ValueError(f"backbones.{self.name}: the {self.model_type} backbone has no token embedding table but "
                             f"the {self.name} modality gives token ids: use a text model (BERT, RoBERTa ...)")
        if not takes_ids and self.vocab_size is not None:
            raise ValueError(f"backbones.{self.name}: the {self.model_type} backbone reads token ids but the "
                             f"{self.name} modality has no vocabulary: use a model of its kind (ViT, AST ...)")
        check_options(self.name, self.backbone.config, options)

    def _check_grid(self, plugin_embed: nn.Module) -> None:
        """The backbone's tokens must be the plug-in's: a fixed patch grid of the same shape, or a
        learned 1-D position table long enough for the plug-in's sequences."""
        where = f"backbones.{self.name}: the {self.model_type} backbone"
        n = self.embed.num_tokens
        pos = getattr(self.backbone.embeddings, "position_embeddings", None)
        if isinstance(pos, nn.Embedding):  # learned absolute positions of a text model
            offset = getattr(self.backbone.embeddings, "padding_idx", None)  # RoBERTa counts from padding_idx + 1
            capacity = pos.num_embeddings - (offset + 1 if offset is not None else 0)
            if n > capacity:
                raise ValueError(f"{where} has {capacity} positions (max_position_embeddings) but the modality has "
                                 f"{n} tokens: lower its max_length to <= {capacity}")
        elif isinstance(pos, nn.Parameter) and pos.dim() == 3:  # a fixed patch grid
            have = pos.shape[1] - self.num_pos_prefix
            if have != n:
                raise ValueError(f"{where} has {have} patch positions but the modality has {n} tokens: the image/"
                                 "patch sizes (or frames and mel bins) must give the same patch grid")
        theirs = self._hf_grid()
        if theirs is not None and self.embed.grid is not None and tuple(theirs) != tuple(self.embed.grid):
            raise ValueError(f"{where} has a {theirs[0]}x{theirs[1]} patch grid but the modality has "
                             f"{self.embed.grid[0]}x{self.embed.grid[1]}: match image_size and patch_size")
        if self.model_type in INPUT_ADAPTERS or theirs is None:
            return
        patch = getattr(plugin_embed, "proj", None)
        channels = getattr(self.backbone.config, "num_channels", None)
        if isinstance(patch, nn.Conv2d) and channels is not None and channels != patch.in_channels:
            raise ValueError(f"{where} takes {channels} channels but the modality gives {patch.in_channels}")

    def _hf_grid(self) -> tuple[int, int] | None:
        """The patch grid the transformers config describes, when it says (image_size/patch_size,
        or the embeddings' ``get_shape``)."""
        c, emb = self.backbone.config, self.backbone.embeddings
        if hasattr(emb, "get_shape"):
            return tuple(int(v) for v in emb.get_shape(c))
        size, patch = getattr(c, "image_size", None), getattr(c, "patch_size", None)
        if size is None or patch is None:
            return None
        h, w = (size, size) if isinstance(size, int) else size
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        return h // ph, w // pw

    # ------------------------------------------------------------------ parts
    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.backbone, self._layers_path)

    @property
    def final_norm(self) -> nn.Module | None:
        return getattr(self.backbone, self._norm_name) if self._norm_name else None

    def tokens(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's embeddings of the whole input -> (B, P + N, H), P prefix tokens in front."""
        if inputs.is_floating_point():
            inputs = inputs.to(next(self.backbone.parameters()).dtype)
        elif self.vocab_size is not None and inputs.numel() and (inputs.min() < 0 or inputs.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}) for the {self.model_type} backbone, got "
                             f"[{int(inputs.min())}, {int(inputs.max())}]: use the backbone's tokenizer")
        adapt = INPUT_ADAPTERS.get(self.model_type)
        try:
            x = self.backbone.embeddings(adapt(inputs) if adapt is not None else inputs)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"the {self.model_type} backbone of {self.name or 'this modality'} cannot embed an "
                             f"input of shape {tuple(inputs.shape)}: {str(err).splitlines()[0]}") from None
        project = getattr(self.backbone, "embeddings_project", None)  # ELECTRA: embedding width -> model width
        if isinstance(project, nn.Module):
            x = project(x)
        expected = inputs.shape[1] if not inputs.is_floating_point() else self.embed.num_tokens
        if x.shape[1] != self.num_prefix + expected:
            raise ValueError(f"the {self.model_type} backbone gave {x.shape[1]} tokens for an input of shape "
                             f"{tuple(inputs.shape)}, expected {self.num_prefix} + {expected}")
        return x

    def forward(
        self,
        inputs: torch.Tensor,
        keep: torch.Tensor | None = None,  # (B, K) indices of visible tokens, or None for all
        valid: torch.Tensor | None = None,  # (B, K) bool, False on padding entries
    ) -> torch.Tensor:
        x = self.tokens(inputs)  # (B, P + N, H)
        P = self.num_prefix
        if keep is not None:
            x = torch.cat([x[:, :P], gather_tokens(x[:, P:], keep)], 1) if P else gather_tokens(x, keep)
        mask = None
        if valid is not None:
            mask = valid.bool()
            if P:
                mask = torch.cat([torch.ones(mask.shape[0], P, dtype=torch.bool, device=mask.device), mask], 1)
        attn = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=x, attention_mask=mask)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, attn, use_reentrant=False)
            else:
                x = layer(x, attn)
            if isinstance(x, tuple):
                x = x[0]
        norm = self.final_norm
        if norm is not None:
            x = norm(x)
        x = x[:, P:]  # (B, K, H)
        return self.proj(x) if self.proj is not None else x  # (B, K, D)

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def load_pretrained(self, ref: str) -> None:
        """Load the weights of the transformers model at ``ref`` (folder, Hub id or ``pkg:``) into
        the backbone; every tensor of the backbone must be found there (its pooler may be left over)."""
        where = local_or_hub(ref, f"backbones.{self.name}.pretrained")
        try:
            with _quiet():  # the pooler we dropped would be reported as unexpected, with a progress bar
                src = AutoModel.from_pretrained(where, config=copy.deepcopy(self.backbone.config))
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"backbones.{self.name}: could not load {where!r}: {str(err).splitlines()[0]}") from None
        state = src.state_dict()
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if missing or unexpected:
            bad = ", ".join((missing + unexpected)[:4])
            raise ValueError(f"backbones.{self.name}: the weights in {where} do not fit the backbone "
                             f"({len(missing)} missing, {len(unexpected)} unexpected: {bad})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' warnings and progress bars off for a while."""
    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _get(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module
