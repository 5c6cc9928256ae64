"""Checkpoint mapping: a Hugging Face IJepaModel converted into mmjepa computes the same outputs."""

from __future__ import annotations

import pytest
import torch
from transformers import IJepaConfig, IJepaModel, ViTConfig, ViTModel

from mmjepa.convert import (
    encoder_state_from_hf_ijepa,
    encoder_state_from_ijepa_original,
    encoder_state_to_hf_ijepa,
    encoder_state_to_ijepa_original,
    hf_ijepa_from_mmjepa,
    mmjepa_model_from_hf_ijepa,
)


def tiny_hf(**overrides) -> IJepaModel:
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8)
    kw.update(overrides)
    torch.manual_seed(0)
    model = IJepaModel(IJepaConfig(**kw)).eval()
    with torch.no_grad():  # make every tensor matter: random biases and norms too
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}, {"layer_norm_eps": 1e-6, "num_channels": 1}])
def test_hf_ijepa_outputs_agree(overrides):
    hf = tiny_hf(**overrides)
    model = mmjepa_model_from_hf_ijepa(hf).eval()
    x = torch.randn(3, hf.config.num_channels, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state  # (B, N, D)
    ours = model.encode(pixel_values=x)["image"]
    ctx = model.encode(use_target=False, pixel_values=x)["image"]
    assert ours.shape == ref.shape == (3, 16, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ctx, ref, atol=1e-5, rtol=1e-5)


def test_gathered_context_equals_hf_on_visible_patches():
    """The context encoder on a subset of patches = IJepaModel on the same patches (its own forward)."""
    hf = tiny_hf()
    model = mmjepa_model_from_hf_ijepa(hf).eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 3, 5, 9, 15], [1, 2, 4, 8, 14]])
    with torch.no_grad():
        emb = hf.embeddings(x)  # (B, N, D) with positions
        h = torch.gather(emb, 1, keep.unsqueeze(-1).expand(-1, -1, 32))
        for layer in hf.layers:
            h = layer(h)
        ref = hf.layernorm(h)
        ours = model.encoders["image"](x, keep)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_round_trips_are_exact():
    hf = tiny_hf()
    model = mmjepa_model_from_hf_ijepa(hf)
    back = hf_ijepa_from_mmjepa(model)
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    enc = model.target_encoders["image"].state_dict()
    orig = encoder_state_to_ijepa_original(enc)
    assert "blocks.1.attn.qkv.weight" in orig and "patch_embed.proj.weight" in orig and "pos_embed" in orig
    again = encoder_state_from_ijepa_original({f"module.{k}": v for k, v in orig.items()})
    assert again.keys() == enc.keys()
    assert all(torch.equal(again[k], enc[k]) for k in enc)
    assert encoder_state_to_hf_ijepa(again).keys() == hf.state_dict().keys()


def test_legacy_v4_names_are_understood():
    hf = tiny_hf()
    v5 = hf.state_dict()
    rename = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
              "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    v4 = {}
    for k, t in v5.items():
        for a, b in rename.items():
            k = k.replace(a, b)
        v4["ijepa." + k.replace("layers.", "encoder.layer.")] = t
    a, b = encoder_state_from_hf_ijepa(v5), encoder_state_from_hf_ijepa(v4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vit_needs_explicit_class_token_drop():
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8))
    with pytest.raises(ValueError, match="class token"):
        encoder_state_from_hf_ijepa(vit.state_dict())
    state = encoder_state_from_hf_ijepa(vit.state_dict(), drop_cls_token=True)
    assert state["embed.pos_embed"].shape == (1, 16, 32)
    model = mmjepa_model_from_hf_ijepa(vit, drop_cls_token=True)
    assert torch.equal(model.encoders["image"].embed.pos_embed, vit.embeddings.position_embeddings[:, 1:])


def test_unknown_keys_raise():
    with pytest.raises(ValueError, match="unexpected key"):
        encoder_state_from_hf_ijepa({"layers.0.attention.weird.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected key"):
        encoder_state_from_ijepa_original({"head.weight": torch.zeros(1)})
