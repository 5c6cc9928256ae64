"""Map ViT / I-JEPA checkpoints onto mmjepa's :class:`~mmjepa.encoder.Encoder` one tensor to one
tensor, and back.

Three layouts are understood:

- Hugging Face ``IJepaModel`` (and ``ViTModel``), transformers v5 names: ``embeddings.patch_embeddings.
  projection``, ``embeddings.position_embeddings``, ``layers.{i}.layernorm_before``,
  ``layers.{i}.attention.{q,k,v,o}_proj``, ``layers.{i}.layernorm_after``, ``layers.{i}.mlp.fc{1,2}``,
  ``layernorm``; the v4 names (``encoder.layer.{i}.attention.attention.query`` ...) and the
  ``ijepa.`` / ``vit.`` prefixes of the task models are accepted too;
- the original facebookresearch I-JEPA / timm ViT layout: ``patch_embed.proj``, ``pos_embed``,
  ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm`` (a DDP ``module.`` prefix
  is stripped);
- mmjepa's own: ``embed.proj``, ``embed.pos_embed``, ``transformer.blocks.{i}...``, ``transformer.norm``.

The only non-renaming step is that Hugging Face keeps separate q/k/v projections where mmjepa (like
timm and I-JEPA) has one fused ``attn.qkv``: the three matrices are stacked in (q, k, v) order, which is
the order in which ``Attention`` splits them, so outputs agree to float rounding.

A ``ViTModel`` has a class token that mmjepa's encoder does not: converting one drops the class
token and its position, so the patch outputs then differ from the ViT's (its patch tokens attend to
the class token). ``IJepaModel`` has no class token and converts exactly.

Whole models (:func:`convert_ijepa`, ``mmjepa convert ijepa``):

- an official I-JEPA training checkpoint (``.pth.tar``: ``encoder``, ``predictor``,
  ``target_encoder``, ``opt``, ``scaler``, ``epoch`` ...) becomes a complete, trainable
  :class:`~mmjepa.MMJepaModel`: context encoder = ``encoder``, EMA target = ``target_encoder``,
  predictor = ``predictor`` (``VisionTransformerPredictor``: ``predictor_embed``, ``mask_token``,
  ``predictor_blocks``, ``predictor_norm``, ``predictor_proj`` one tensor to one tensor; its stored
  ``predictor_pos_embed`` must be the fixed 2-D sin-cos table mmjepa computes). The file is read with
  ``torch.load(weights_only=True)`` only. The optimizer and grad-scaler states are not converted;
  the attention heads are not in the shapes (the published default per width is used, or give them);
- a Hugging Face ``IJepaModel`` holds the encoder only: it becomes both the context and the target
  encoder, and the predictor is freshly initialised.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, IJepaConfig, IJepaModel
from transformers.initialization import no_init_weights

from .layers import sincos_2d
from .models import MMJepaConfig, MMJepaModel
from .paths import looks_local

StateDict = dict[str, torch.Tensor]

# HF block-internal names (v5 and v4) -> mmjepa block-internal names; q/k/v are handled separately
_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",  # v4
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1",  # v4
    "output.dense": "mlp.fc2",  # v4
}
_HF_QKV = {  # v5, v4
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
}
_HF_LAYER = re.compile(r"^(?:layers|encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_IGNORED = ("pooler.", "classifier.", "embeddings.mask_token")


def _strip(sd: dict[str, Any], prefixes: tuple[str, ...]) -> StateDict:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def encoder_state_from_hf_ijepa(sd: dict[str, torch.Tensor], drop_cls_token: bool = False) -> StateDict:
    """A Hugging Face ``IJepaModel`` / ``ViTModel`` state dict -> an mmjepa ``Encoder`` state dict.

    ``drop_cls_token`` must be set to convert a ``ViTModel`` (mmjepa has no class token; see the
    module docstring). Raises ValueError on a key it does not understand.
    """
    sd = _strip(dict(sd), ("ijepa.", "vit.", "model."))
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    has_cls = "embeddings.cls_token" in sd
    if has_cls and not drop_cls_token:
        raise ValueError("this checkpoint has a class token (a ViTModel); mmjepa's encoder has none: pass "
                         "drop_cls_token=True to drop it (the outputs will then differ from the ViT's)")
    for key, t in sd.items():
        if key.startswith(_HF_IGNORED) or key == "embeddings.cls_token":
            continue
        if key == "embeddings.patch_embeddings.projection.weight":
            out["embed.proj.weight"] = t
        elif key == "embeddings.patch_embeddings.projection.bias":
            out["embed.proj.bias"] = t
        elif key == "embeddings.position_embeddings":
            out["embed.pos_embed"] = t[:, 1:] if has_cls else t  # (1, N, D)
        elif key in ("layernorm.weight", "layernorm.bias"):
            out[f"transformer.norm.{key.split('.')[-1]}"] = t
        else:
            m = _HF_LAYER.match(key)
            if m is None:
                raise ValueError(f"unexpected key in the IJepa/ViT state dict: {key!r}")
            i, name, kind = int(m.group(1)), m.group(2), m.group(3)
            which = next((c for c, names in _HF_QKV.items() if name in names), None)
            if which is not None:
                qkv.setdefault((i, kind), {})[which] = t
            elif name in _HF_BLOCK:
                out[f"transformer.blocks.{i}.{_HF_BLOCK[name]}.{kind}"] = t
            else:
                raise ValueError(f"unexpected key in the IJepa/ViT state dict: {key!r}")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {i} is missing some of q/k/v {kind}: has {sorted(parts)}")
        out[f"transformer.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def encoder_state_to_hf_ijepa(sd: dict[str, torch.Tensor]) -> StateDict:
    """An mmjepa ``Encoder`` state dict -> a Hugging Face ``IJepaModel`` state dict (v5 names)."""
    out: StateDict = {}
    inv = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
           "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    block = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, t in sd.items():
        if key == "embed.proj.weight":
            out["embeddings.patch_embeddings.projection.weight"] = t
        elif key == "embed.proj.bias":
            out["embeddings.patch_embeddings.projection.bias"] = t
        elif key == "embed.pos_embed":
            out["embeddings.position_embeddings"] = t
        elif key.startswith("transformer.norm."):
            out[f"layernorm.{key.split('.')[-1]}"] = t
        else:
            m = block.match(key)
            if m is None:
                raise ValueError(f"unexpected key in the mmjepa encoder state dict: {key!r}")
            i, name, kind = m.group(1), m.group(2), m.group(3)
            if name == "attn.qkv":
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, 0)):
                    out[f"layers.{i}.attention.{part}.{kind}"] = chunk.clone()
            elif name in inv:
                out[f"layers.{i}.{inv[name]}.{kind}"] = t
            else:
                raise ValueError(f"unexpected key in the mmjepa encoder state dict: {key!r}")
    return out


def encoder_state_from_ijepa_original(sd: dict[str, torch.Tensor]) -> StateDict:
    """An original I-JEPA (facebookresearch) / timm ViT encoder state dict -> mmjepa ``Encoder``.

    Takes e.g. ``torch.load(ckpt)["target_encoder"]``; the DDP ``module.`` prefix is stripped.
    """
    out: StateDict = {}
    for key, t in _strip(dict(sd), ("module.", "backbone.")).items():
        if key.startswith("patch_embed.proj."):
            out["embed." + key[len("patch_embed."):]] = t
        elif key == "pos_embed":
            out["embed.pos_embed"] = t
        elif key.startswith("blocks."):
            out["transformer." + key] = t
        elif key.startswith("norm."):
            out["transformer." + key] = t
        elif key == "cls_token":
            raise ValueError("this ViT has a class token; mmjepa's encoder has none")
        else:
            raise ValueError(f"unexpected key in the I-JEPA state dict: {key!r}")
    return out


def encoder_state_to_ijepa_original(sd: dict[str, torch.Tensor]) -> StateDict:
    """An mmjepa ``Encoder`` state dict -> the original I-JEPA / timm ViT layout."""
    out: StateDict = {}
    for key, t in sd.items():
        if key in ("embed.proj.weight", "embed.proj.bias"):
            out["patch_embed." + key[len("embed."):]] = t
        elif key == "embed.pos_embed":
            out["pos_embed"] = t
        elif key.startswith("transformer."):
            out[key[len("transformer."):]] = t
        else:
            raise ValueError(f"unexpected key in the mmjepa encoder state dict: {key!r}")
    return out


def config_from_hf_ijepa(hf_config: Any, **overrides: Any):
    """An ``IJepaConfig`` / ``ViTConfig`` -> an image-only :class:`~mmjepa.MMJepaConfig` with the same
    encoder (the predictor keeps mmjepa's defaults unless overridden)."""
    if getattr(hf_config, "hidden_act", "gelu") != "gelu":
        raise ValueError(f"mmjepa's MLP uses exact GELU; this checkpoint uses {hf_config.hidden_act!r}")
    image_size = hf_config.image_size if isinstance(hf_config.image_size, int) else tuple(hf_config.image_size)
    patch_size = hf_config.patch_size if isinstance(hf_config.patch_size, int) else hf_config.patch_size[0]
    kwargs = dict(
        modalities={"image": {"image_size": image_size, "patch_size": patch_size,
                              "num_channels": hf_config.num_channels}},
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        mlp_ratio=hf_config.intermediate_size / hf_config.hidden_size,
        qkv_bias=getattr(hf_config, "qkv_bias", True),
        layer_norm_eps=hf_config.layer_norm_eps,
        position_embedding="sincos",
    )
    if kwargs["modalities"]["image"]["num_channels"] == 1:
        kwargs["modalities"]["image"].update(image_mean=(0.5,), image_std=(0.5,))
    kwargs.update(overrides)
    return MMJepaConfig(**kwargs)


def mmjepa_model_from_hf_ijepa(hf_model_or_dir: Any, drop_cls_token: bool = False, image_size: int | None = None,
                               **config_overrides: Any):
    """An :class:`~mmjepa.MMJepaModel` whose image context *and* target encoders carry the weights of
    a Hugging Face ``IJepaModel`` (an instance, a local folder or a Hub id); the predictor is freshly
    initialised (an ``IJepaModel`` has none). Published I-JEPA weights are the target encoder's, so
    both encoders start from them.

    ``image_size``: another input size than the checkpoint's; allowed when its position table is
    the fixed 2-D sin-cos one, which the model then computes for its own grid.
    """
    hf = hf_model_or_dir
    if isinstance(hf, (str, Path)):
        hf = AutoModel.from_pretrained(str(hf))
    config = config_from_hf_ijepa(hf.config, **config_overrides)
    state = encoder_state_from_hf_ijepa(hf.state_dict(), drop_cls_token=drop_cls_token)
    if image_size is not None:
        image = dict(config.modalities["image"])
        patch = image["patch_size"]
        old_grid = tuple(s // patch for s in _pair(image["image_size"]))
        image["image_size"] = image_size
        config = config_from_hf_ijepa(hf.config, **{**config_overrides, "modalities": {"image": image}})
        state = _refit_positions(state, "embed.pos_embed", old_grid, config.modality_config("image").grid,
                                 "the encoder's position_embeddings")
    model = MMJepaModel(config)
    for encoders in (model.encoders, model.target_encoders):
        _load_part(encoders["image"], state, "the IJepaModel encoder", allow_missing=("embed.pos_embed",))
    return model


def hf_ijepa_from_mmjepa(model: Any, modality: str = "image", use_target: bool = True):
    """A Hugging Face ``IJepaModel`` with the weights of ``model``'s (target) encoder of ``modality``."""
    cfg = model.config
    mcfg = cfg.modality_config(modality)
    if cfg.position_embedding != "sincos":
        raise ValueError("only encoders with added (sincos/learned) positions map onto IJepaModel, not RoPE")
    enc = (model.target_encoders if use_target else model.encoders)[modality]
    hcfg = IJepaConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                       num_attention_heads=cfg.num_attention_heads,
                       intermediate_size=int(cfg.hidden_size * cfg.mlp_ratio), qkv_bias=cfg.qkv_bias,
                       layer_norm_eps=cfg.layer_norm_eps, image_size=mcfg.image_size, patch_size=mcfg.patch_size,
                       num_channels=mcfg.num_channels)
    hf = IJepaModel(hcfg)
    hf.load_state_dict(encoder_state_to_hf_ijepa(enc.state_dict()), strict=True)
    return hf.eval()


# ----------------------------------------------------------------------------- whole I-JEPA models
# Published I-JEPA encoder widths -> attention heads (facebookresearch/ijepa src/models/vision_transformer.py:
# vit_tiny, vit_small, vit_base, vit_large, vit_huge, vit_giant). The heads are not in the tensor
# shapes; the predictor uses the encoder's heads (src/helper.py init_model).
IJEPA_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
IJEPA_LAYER_NORM_EPS = 1e-6  # every I-JEPA encoder and predictor: partial(nn.LayerNorm, eps=1e-6)
_PARTS = ("encoder", "target_encoder", "predictor")  # the state dicts of an official training checkpoint
_PREDICTOR_DIRECT = ("predictor_embed.", "predictor_proj.")


def _pair(x: Any) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _load_part(module: nn.Module, state: StateDict, what: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module``: every tensor must match (ValueError naming the part otherwise);
    only the keys in ``allow_missing`` (fixed tables the module computes itself) may be absent."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{what} does not fit the inferred configuration: "
                         f"{' '.join(str(err).split())[:400]}") from None
    missing = [k for k in missing if k not in allow_missing]
    if missing or unexpected:
        raise ValueError(f"{what} does not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}")


def _is_sincos(table: torch.Tensor, grid: tuple[int, int]) -> bool:
    """True when ``table`` (..., N, D) is the fixed 2-D sin-cos table of ``grid`` (I-JEPA's and mmjepa's)."""
    table = table.reshape(-1, table.shape[-1]).float()
    if table.shape[0] != grid[0] * grid[1] or table.shape[1] % 4:
        return False
    return torch.allclose(table, sincos_2d(table.shape[1], *grid), atol=1e-5, rtol=0)


def _refit_positions(state: StateDict, key: str, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     what: str) -> StateDict:
    """For another token grid than the checkpoint's: drop the stored fixed sin-cos table (the model
    computes the table of its own grid); a table that is not the fixed one cannot move (ValueError)."""
    if tuple(old_grid) == tuple(new_grid) or key not in state:
        return state
    if not _is_sincos(state[key], old_grid):
        raise ValueError(f"{what} is not the fixed 2-D sin-cos table: the image size cannot be changed "
                         f"(convert at the checkpoint's own size, {old_grid[0]}x{old_grid[1]} patches)")
    return {k: v for k, v in state.items() if k != key}


def load_ijepa_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an official I-JEPA ``.pth.tar`` with ``torch.load(map_location="cpu", weights_only=True)``
    — tensors and plain containers only, so a pickle naming any other object is refused, never run
    (ValueError). Memory-mapped when the file allows it, so the optimizer state is never read in."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # files of the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise ValueError(f"{path}: refused: the file names the Python object {found.group(1)}, and "
                             "checkpoints are read with torch.load(weights_only=True) only (tensors and plain "
                             "containers), which never runs what a pickle names") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        raise ValueError(f"{path}: not a PyTorch checkpoint readable with weights_only=True"
                         f" ({detail.group(1).strip() if detail else _first_line(err)})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: expected a dict of state dicts, got a {type(ckpt).__name__}")
    return dict(ckpt)


def predictor_state_from_ijepa_original(sd: dict[str, torch.Tensor]) -> StateDict:
    """An official I-JEPA ``VisionTransformerPredictor`` state dict -> an mmjepa ``Predictor`` state
    dict (``predictor_blocks`` -> ``transformer.blocks``, ``predictor_norm`` -> ``transformer.norm``;
    ``predictor_embed``, ``mask_token``, ``predictor_proj`` keep their names). The stored
    ``predictor_pos_embed`` is left out: mmjepa computes that fixed table (see :func:`convert_ijepa`,
    which checks they agree). The DDP ``module.`` prefix is stripped."""
    out: StateDict = {}
    for key, t in _strip(dict(sd), ("module.",)).items():
        if key == "predictor_pos_embed":
            continue
        if key.startswith("predictor_blocks."):
            out["transformer.blocks." + key[len("predictor_blocks."):]] = t
        elif key.startswith("predictor_norm."):
            out["transformer.norm." + key[len("predictor_norm."):]] = t
        elif key == "mask_token" or key.startswith(_PREDICTOR_DIRECT):
            out[key] = t
        else:
            raise ValueError(f"unexpected key in the I-JEPA predictor state dict: {key!r}")
    return out


def _transformer_shape(sd: StateDict, what: str) -> tuple[int, int, int, bool]:
    """(width, depth, MLP hidden size, qkv bias) of mmjepa-named ``transformer.blocks`` tensors."""
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.blocks\.(\d+)\.", k))}
    if not layers:
        raise ValueError(f"{what} has no transformer blocks")
    try:
        width = sd["transformer.blocks.0.norm1.weight"].shape[0]
        hidden = sd["transformer.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"{what} lacks {err.args[0]!r}") from None
    return width, max(layers) + 1, hidden, "transformer.blocks.0.attn.qkv.bias" in sd


def config_from_ijepa_original(encoder: StateDict, predictor: StateDict | None = None, num_heads: int | None = None,
                               image_size: int | None = None, **overrides: Any) -> MMJepaConfig:
    """The image-only :class:`~mmjepa.MMJepaConfig` of an official I-JEPA encoder (and predictor),
    both given as mmjepa state dicts (:func:`encoder_state_from_ijepa_original`,
    :func:`predictor_state_from_ijepa_original`).

    Width, depth, MLP ratio, qkv bias, patch size, channels and the image size (from ``pos_embed``)
    come from the shapes; the heads do not: ``num_heads``, else the published I-JEPA value for the
    width (:data:`IJEPA_HEADS`). The predictor's width and depth come from its shapes and its heads
    are the encoder's, as in I-JEPA; without a predictor, mmjepa's predictor defaults (or
    ``overrides``) apply.
    """
    try:
        proj, pos = encoder["embed.proj.weight"], encoder["embed.pos_embed"]
    except KeyError as err:
        raise ValueError(f"the encoder state dict lacks {err.args[0]!r} (patch_embed.proj / pos_embed)") from None
    width, depth, hidden, qkv_bias = _transformer_shape(encoder, "the encoder")
    if proj.shape[-1] != proj.shape[-2]:
        raise ValueError(f"non-square patches {tuple(proj.shape[-2:])} are not supported")
    patch, channels, tokens = proj.shape[-1], proj.shape[1], pos.shape[-2]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"pos_embed has {tokens} positions: not a square grid of patches")
    heads = num_heads or IJEPA_HEADS.get(width)
    if heads is None:
        raise ValueError(f"width {width} is not a published I-JEPA width ({sorted(IJEPA_HEADS)}): the number of "
                         "attention heads is not in the tensor shapes, give it (--num-heads)")
    mlp_ratio = hidden / width
    image = {"image_size": image_size or grid * patch, "patch_size": patch, "num_channels": channels}
    if channels == 1:
        image.update(image_mean=(0.5,), image_std=(0.5,))
    kwargs: dict[str, Any] = dict(
        modalities={"image": image}, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, layer_norm_eps=IJEPA_LAYER_NORM_EPS, position_embedding="sincos")
    if predictor is not None:
        if "predictor_embed.weight" not in predictor:
            raise ValueError("the predictor state dict lacks 'predictor_embed.weight'")
        p_width, p_depth, p_hidden, p_bias = _transformer_shape(predictor, "the predictor")
        if abs(p_hidden / p_width - mlp_ratio) > 1e-9 or p_bias != qkv_bias:
            raise ValueError(
                f"the predictor's MLP ratio ({p_hidden / p_width:g}) or qkv bias ({p_bias}) differs from the "
                f"encoder's ({mlp_ratio:g}, {qkv_bias}), and mmjepa's config has one of each for both (a ViT-g "
                "checkpoint): convert the encoders only (--no-predictor) and train a fresh predictor")
        kwargs.update(predictor_hidden_size=p_width, predictor_num_hidden_layers=p_depth,
                      predictor_num_attention_heads=heads)
    kwargs.update(overrides)
    return MMJepaConfig(**kwargs)


@dataclass
class Conversion:
    """A converted :class:`~mmjepa.MMJepaModel` and what became of each part of its source."""

    model: MMJepaModel
    source: str
    converted: list[str] = field(default_factory=list)  # "part <- source entry"
    fresh: list[str] = field(default_factory=list)  # parts freshly initialised
    dropped: list[str] = field(default_factory=list)  # entries of the source that are not converted

    def summary(self) -> str:
        """One line: the source, the architecture, what was converted, initialised and left out."""
        c = self.model.config
        image = c.modality_config("image")
        arch = (f"ViT width {c.hidden_size} depth {c.num_hidden_layers} heads {c.num_attention_heads} "
                f"patch {image.patch_size} image {image.image_size}; predictor width {c.predictor_hidden_size} "
                f"depth {c.predictor_num_hidden_layers}")
        parts = [f"converted {', '.join(self.converted)}"]
        if self.fresh:
            parts.append(f"freshly initialised: {', '.join(self.fresh)}")
        if self.dropped:
            parts.append(f"not converted: {', '.join(self.dropped)}")
        return f"{self.source} ({arch}): " + "; ".join(parts)


def _split_checkpoint(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, StateDict], list[str], str]:
    """An official checkpoint -> ({part: state dict}, the entries left out, a note such as "epoch 300").
    A bare encoder state dict (``pos_embed``, ``blocks...``) is taken as the encoder."""
    parts = {k: dict(ckpt[k]) for k in _PARTS if isinstance(ckpt.get(k), Mapping)}
    if not parts:
        keys = _strip(dict(ckpt), ("module.", "backbone."))
        if "pos_embed" in keys or "patch_embed.proj.weight" in keys:
            return {"encoder": dict(ckpt)}, [], ""
        raise ValueError(f"{source}: no I-JEPA state dicts: expected the entries {', '.join(_PARTS)} "
                         f"(found {', '.join(sorted(map(str, ckpt))[:8]) or 'none'})")
    dropped, meta = [], []
    for key, value in ckpt.items():
        if key in parts or value is None:
            continue
        if isinstance(value, (bool, int, float, str)):
            if key == "epoch":
                meta.append(f"epoch {value}")
            continue
        dropped.append({"opt": "opt (the optimizer state)", "scaler": "scaler (the AMP grad-scaler state)"}.get(
            key, str(key)))
    return parts, dropped, ", ".join(meta)


def convert_ijepa_checkpoint(checkpoint: str | Path | Mapping[str, Any], num_heads: int | None = None,
                             image_size: int | None = None, predictor: bool = True,
                             **config_overrides: Any) -> Conversion:
    """An official facebookresearch I-JEPA training checkpoint (a ``.pth.tar`` path, read with
    ``torch.load(weights_only=True)`` only, or the loaded dict) -> a complete, trainable
    :class:`~mmjepa.MMJepaModel`, in a :class:`Conversion` that says what became of each part.

    Context encoder = ``encoder``, EMA target encoder = ``target_encoder``, predictor = ``predictor``;
    when only one encoder is stored it becomes both, and without a ``predictor`` (or with
    ``predictor=False``: a ViT-g, whose predictor MLP ratio differs from its encoder's) the predictor
    is freshly initialised. The optimizer and grad-scaler states are not converted (train anew with
    mmjepa's optimizer). ``num_heads``: the encoder's (and predictor's) attention heads, default the
    published value for the width. ``image_size``: another input size than the checkpoint's; the
    fixed sin-cos tables are then computed for the new grid (the I-JEPA code interpolates instead).
    """
    if isinstance(checkpoint, Mapping):
        ckpt, source = dict(checkpoint), "I-JEPA checkpoint"
    else:
        ckpt, source = load_ijepa_checkpoint(checkpoint), f"I-JEPA checkpoint {checkpoint}"
    parts, dropped, meta = _split_checkpoint(ckpt, source)
    if meta:
        source = f"{source}, {meta}"
    enc_key = "encoder" if "encoder" in parts else "target_encoder"
    tgt_key = "target_encoder" if "target_encoder" in parts else enc_key
    if enc_key not in parts:
        raise ValueError(f"{source}: holds a predictor but no encoder")
    ctx_state = encoder_state_from_ijepa_original(parts[enc_key])
    tgt_state = encoder_state_from_ijepa_original(parts[tgt_key])
    pred_state, stored_pred_pos = None, None
    if "predictor" in parts and predictor:
        raw = _strip(parts["predictor"], ("module.",))
        pred_state, stored_pred_pos = predictor_state_from_ijepa_original(raw), raw.get("predictor_pos_embed")
    elif "predictor" in parts:
        dropped.append("predictor (predictor=False)")
    config = config_from_ijepa_original(ctx_state, pred_state, num_heads, image_size, **config_overrides)
    image = config.modality_config("image")
    old_grid = (math.isqrt(ctx_state["embed.pos_embed"].shape[-2]),) * 2
    if stored_pred_pos is not None and not _is_sincos(stored_pred_pos, old_grid):
        raise ValueError(f"{source}: predictor_pos_embed is not the fixed 2-D sin-cos table that mmjepa's predictor "
                         "computes: convert the encoders only (predictor=False / --no-predictor)")
    ctx_state, tgt_state = (_refit_positions(s, "embed.pos_embed", old_grid, image.grid, f"{name}'s pos_embed")
                            for s, name in ((ctx_state, enc_key), (tgt_state, tgt_key)))
    if pred_state is not None:  # every tensor comes from the checkpoint: skip the random init
        with no_init_weights():
            model = MMJepaModel(config)
    else:
        model = MMJepaModel(config)
    fixed = ("embed.pos_embed",)  # computed by the model for its grid when the image size changes
    _load_part(model.encoders["image"], ctx_state, f"{source}: {enc_key}", fixed)
    _load_part(model.target_encoders["image"], tgt_state, f"{source}: {tgt_key}", fixed)
    conv = Conversion(model, source, [f"context encoder <- {enc_key}", f"target encoder <- {tgt_key}"],
                      dropped=dropped)
    if pred_state is not None:
        _load_part(model.predictor, pred_state, f"{source}: predictor")
        conv.converted.append("predictor <- predictor")
        # the init was skipped: everything else the model holds must be a table computed at construction
        own = {k for k in model.state_dict() if not k.startswith("centers.")}
        loaded = {f"encoders.image.{k}" for k in ctx_state} | {f"target_encoders.image.{k}" for k in tgt_state} | {
            f"predictor.{k}" for k in pred_state}
        unset = sorted(k for k in own - loaded if not k.endswith(fixed))
        if unset:
            raise ValueError(f"{source}: the converted model has tensors no checkpoint entry sets: {unset[:6]}")
    else:
        conv.fresh.append("predictor")
    return conv


def mmjepa_model_from_ijepa_checkpoint(checkpoint: str | Path | Mapping[str, Any], num_heads: int | None = None,
                                       image_size: int | None = None, predictor: bool = True,
                                       **config_overrides: Any) -> MMJepaModel:
    """The model of :func:`convert_ijepa_checkpoint` (an official I-JEPA ``.pth.tar`` -> a complete
    :class:`~mmjepa.MMJepaModel`)."""
    return convert_ijepa_checkpoint(checkpoint, num_heads, image_size, predictor, **config_overrides).model


def convert_ijepa(source: str | Path | Mapping[str, Any], num_heads: int | None = None, image_size: int | None = None,
                  predictor: bool = True, **config_overrides: Any) -> Conversion:
    """Any I-JEPA source -> a trainable :class:`~mmjepa.MMJepaModel` (in a :class:`Conversion`).

    ``source``: an official training checkpoint (a file, typically ``.pth.tar``, or its loaded dict:
    :func:`convert_ijepa_checkpoint`), or a Hugging Face ``IJepaModel`` folder or Hub id,
    which holds the encoder only: it becomes both the context and the target encoder and **the
    predictor is freshly initialised** (:func:`mmjepa_model_from_hf_ijepa`).
    """
    if isinstance(source, Mapping):
        return convert_ijepa_checkpoint(source, num_heads, image_size, predictor, **config_overrides)
    ref = str(source)
    path = Path(ref).expanduser()
    if path.is_file():
        return convert_ijepa_checkpoint(path, num_heads, image_size, predictor, **config_overrides)
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is a folder without config.json: not a transformers IJepaModel folder")
    if not path.is_dir() and (looks_local(ref) or path.suffix in (".tar", ".pth", ".pt", ".ckpt")):
        raise FileNotFoundError(f"no such checkpoint file or folder: {path}")
    if num_heads is not None:
        raise ValueError("num_heads (--num-heads) is for official checkpoints: an IJepaModel's config names its heads")
    what = str(path) if path.is_dir() else ref
    try:
        hf_config = AutoConfig.from_pretrained(what)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not read a transformers config from {what!r}: {_first_line(err)}") from None
    if hf_config.model_type != "ijepa":
        raise ValueError(f"{what} holds a {hf_config.model_type!r} model, not a transformers IJepaModel")
    try:
        hf = IJepaModel.from_pretrained(what)
    except OSError as err:
        raise ValueError(f"could not load the IJepaModel {what!r}: {_first_line(err)}") from None
    model = mmjepa_model_from_hf_ijepa(hf, image_size=image_size, **config_overrides)
    return Conversion(model, f"transformers IJepaModel {what}",
                      ["context encoder <- IJepaModel", "target encoder <- IJepaModel"],
                      fresh=["predictor (an IJepaModel has none)"])
