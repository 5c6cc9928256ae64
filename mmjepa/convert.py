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
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, IJepaConfig, IJepaModel

from .models import MMJepaConfig, MMJepaModel

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


def mmjepa_model_from_hf_ijepa(hf_model_or_dir: Any, drop_cls_token: bool = False, **config_overrides: Any):
    """An :class:`~mmjepa.MMJepaModel` whose image context *and* target encoders carry the weights of
    a Hugging Face ``IJepaModel`` (an instance, a local folder or a Hub id); the predictor is freshly
    initialised. Published I-JEPA weights are the target encoder's, so both encoders start from them.
    """
    hf = hf_model_or_dir
    if isinstance(hf, (str, Path)):
        hf = AutoModel.from_pretrained(str(hf))
    config = config_from_hf_ijepa(hf.config, **config_overrides)
    model = MMJepaModel(config)
    state = encoder_state_from_hf_ijepa(hf.state_dict(), drop_cls_token=drop_cls_token)
    for encoders in (model.encoders, model.target_encoders):
        missing, unexpected = encoders["image"].load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("embed.coords")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the encoder: missing {missing}, unexpected {unexpected}")
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
