"""Checkpoint mapping: I-JEPA checkpoints converted into mmjepa compute the same outputs — a Hugging
Face IJepaModel's encoder, and an official training checkpoint's encoder, target encoder and
predictor (against tests/ijepa_reference.py, a re-implementation of the official modules)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ijepa_reference import ijepa_loss, official_checkpoint
from transformers import IJepaConfig, IJepaModel, ViTConfig, ViTModel

import mmjepa_cli
from mmjepa import MaskCollator, MMJepaModel
from mmjepa.convert import (
    config_from_ijepa_original,
    convert_ijepa,
    encoder_state_from_hf_ijepa,
    encoder_state_from_ijepa_original,
    encoder_state_to_hf_ijepa,
    encoder_state_to_ijepa_original,
    hf_ijepa_from_mmjepa,
    load_ijepa_checkpoint,
    mmjepa_model_from_hf_ijepa,
)
from mmjepa.layers import sincos_2d


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



# ----------------------------------------------------------------------------- official checkpoints
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The reference (encoder, target encoder, predictor) and their checkpoint saved as a .pth.tar."""
    encoder, target, predictor, ckpt = official_checkpoint()
    path = tmp_path_factory.mktemp("ijepa") / "IN1K-vit.tiny.4-7e.pth.tar"
    torch.save(ckpt, path)
    return encoder, target, predictor, path


def masked_batch(model, n=3, seed=0):
    torch.manual_seed(seed)
    collate = MaskCollator.from_config(model.config, seed=seed)
    return collate([{"pixel_values": x} for x in torch.randn(n, 3, 32, 32)])


def mask_major(pred, B, M):
    """mmjepa's predictions (B*M, K, D), sample-major -> the I-JEPA order (M*B, K, D), mask-major."""
    return pred.reshape(B, M, *pred.shape[1:]).transpose(0, 1).reshape(B * M, *pred.shape[1:])


def test_official_checkpoint_reproduces_encoders_and_predictor(official, one_thread):
    encoder, target, predictor, path = official
    conv = convert_ijepa(path, num_heads=2)
    model = conv.model.eval()
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.predictor_hidden_size,
            c.predictor_num_hidden_layers, c.predictor_num_attention_heads) == (32, 2, 2, 16, 2, 2)
    assert c.modality_config("image").image_size == 32 and c.modality_config("image").patch_size == 4
    summary = conv.summary()
    assert "predictor <- predictor" in summary and "target encoder <- target_encoder" in summary
    assert "not converted: opt (the optimizer state)" in summary and "epoch 7" in summary and "\n" not in summary

    batch = masked_batch(model)
    x, masks = batch["pixel_values"], batch["masks"]["image"]
    ctx, tgt = masks["context"], masks["target"]  # (B, Kc), (B, M, Kt)
    B, M = tgt.shape[:2]
    target_masks = [tgt[:, m] for m in range(M)]
    with torch.no_grad():
        z_ref = encoder(x, [ctx])
        z = model.encoders["image"](x, ctx)
        torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode(pixel_values=x)["image"], target(x), atol=1e-5, rtol=1e-5)
        pred_ref = predictor(z_ref, [ctx], target_masks)  # (M*B, Kt, D)
        pred = model.predictor([("image", z, ctx, None)], "image", tgt)  # (B*M, Kt, D)
        torch.testing.assert_close(mask_major(pred, B, M), pred_ref, atol=1e-5, rtol=1e-5)
        # the whole I-JEPA loss of src/train.py = mmjepa's training forward on the same masks
        torch.testing.assert_close(model(**batch).loss, ijepa_loss(encoder, target, predictor, x, [ctx], target_masks),
                                   atol=1e-6, rtol=1e-5)


def test_converted_model_saves_and_trains(official, tmp_path, one_thread):
    encoder, target, predictor, path = official
    convert_ijepa(path, num_heads=2).model.save_pretrained(tmp_path / "m")
    model = MMJepaModel.from_pretrained(tmp_path / "m")  # the fixed predictor tables are recomputed on load
    batch = masked_batch(model, seed=1)
    ctx, tgt = batch["masks"]["image"]["context"], batch["masks"]["image"]["target"]
    with torch.no_grad():
        z = model.encoders["image"](batch["pixel_values"], ctx)
        pred = model.predictor([("image", z, ctx, None)], "image", tgt)
        ref = predictor(encoder(batch["pixel_values"], [ctx]), [ctx], [tgt[:, m] for m in range(tgt.shape[1])])
    torch.testing.assert_close(mask_major(pred, *tgt.shape[:2]), ref, atol=1e-5, rtol=1e-5)

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collate = MaskCollator.from_config(model.config, seed=2)
    images = torch.randn(4, 3, 32, 32)
    losses = []
    for step in range(3):
        out = model(**collate([{"pixel_values": x} for x in images]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_target(model.momentum(step, 10))
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    for part in ("encoders.image.transformer.blocks.0.attn.qkv.weight", "predictor.mask_token",
                 "predictor.transformer.blocks.1.mlp.fc2.weight", "target_encoders.image.transformer.norm.weight"):
        assert not torch.equal(before[part], after[part]), part


def test_config_inference_uses_published_heads():
    def encoder(width, depth=1, patch=14, grid=16, hidden=None):
        hidden = hidden or 4 * width
        sd = {"module.patch_embed.proj.weight": torch.zeros(width, 3, patch, patch),
              "module.pos_embed": torch.zeros(1, grid * grid, width)}
        for i in range(depth):
            sd[f"module.blocks.{i}.norm1.weight"] = torch.zeros(width)
            sd[f"module.blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * width)
            sd[f"module.blocks.{i}.mlp.fc1.weight"] = torch.zeros(hidden, width)
        return encoder_state_from_ijepa_original(sd)

    cfg = config_from_ijepa_original(encoder(192, depth=3))  # ViT-Ti/14 at 224
    assert (cfg.num_attention_heads, cfg.num_hidden_layers, cfg.mlp_ratio, cfg.qkv_bias) == (3, 3, 4.0, True)
    assert cfg.modality_config("image").image_size == 224 and cfg.modality_config("image").patch_size == 14
    assert config_from_ijepa_original(encoder(1280)).num_attention_heads == 16  # ViT-H
    assert config_from_ijepa_original(encoder(1280), num_heads=8).num_attention_heads == 8
    with pytest.raises(ValueError, match="--num-heads"):
        config_from_ijepa_original(encoder(32))
    with pytest.raises(ValueError, match="square grid"):
        config_from_ijepa_original({**encoder(192), "embed.pos_embed": torch.zeros(1, 15, 192)})


def test_predictor_with_another_mlp_ratio_needs_no_predictor(tmp_path):
    """As in ViT-g (encoder MLP ratio 48/11, predictor 4; here 3 and 4): mmjepa has one ratio, so only the
    encoders convert."""
    _, _, _, ckpt = official_checkpoint(embed_dim=32)
    torch.manual_seed(0)
    for name in ("encoder", "target_encoder"):
        for i in range(2):
            ckpt[name][f"module.blocks.{i}.mlp.fc1.weight"] = torch.randn(96, 32)
            ckpt[name][f"module.blocks.{i}.mlp.fc1.bias"] = torch.randn(96)
            ckpt[name][f"module.blocks.{i}.mlp.fc2.weight"] = torch.randn(32, 96)
    with pytest.raises(ValueError, match="--no-predictor"):
        convert_ijepa(ckpt, num_heads=2)
    conv = convert_ijepa(ckpt, num_heads=2, predictor=False)
    assert conv.model.config.mlp_ratio == 3.0 and conv.fresh == ["predictor"]
    assert "predictor (predictor=False)" in conv.summary()


def test_image_size_change_recomputes_the_fixed_tables(official):
    _, _, _, path = official
    model = convert_ijepa(path, num_heads=2, image_size=48).model
    assert model.config.modality_config("image").grid == (12, 12)
    for enc in (model.encoders["image"], model.target_encoders["image"]):
        torch.testing.assert_close(enc.embed.pos_embed[0], sincos_2d(32, 12, 12))
    assert model.encode(pixel_values=torch.randn(1, 3, 48, 48))["image"].shape == (1, 144, 32)
    hf = tiny_hf()
    with pytest.raises(ValueError, match="not the fixed 2-D sin-cos"):
        mmjepa_model_from_hf_ijepa(hf, image_size=48)  # tiny_hf's positions are random: they cannot move
    with torch.no_grad():
        hf.embeddings.position_embeddings.copy_(sincos_2d(32, 4, 4)[None])
    assert mmjepa_model_from_hf_ijepa(hf, image_size=48).config.modality_config("image").grid == (6, 6)


def _side_effect(path):  # what unpickling the object below would run
    Path(path).write_text("the pickle ran code")
    return None


class Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_side_effect, (self.path,))


def test_pickled_objects_are_refused_not_run(official, tmp_path, capsys):
    _, _, _, path = official
    ckpt = torch.load(path, weights_only=True)
    marker = tmp_path / "ran.txt"
    bad = tmp_path / "bad.pth.tar"
    torch.save({**ckpt, "extra": Payload(marker)}, bad)
    with pytest.raises(ValueError, match=r"refused: .*Payload|refused: .*_side_effect"):
        load_ijepa_checkpoint(bad)
    assert not marker.exists()
    assert mmjepa_cli.main(["convert", "ijepa", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "weights_only=True" in err and len(err.splitlines()) == 1 and not marker.exists()
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_ijepa_checkpoint(tmp_path / "junk.pth.tar")


# ----------------------------------------------------------------------------- the command line
def test_cli_round_trip_official_to_mmjepa_to_hf(official, tmp_path, capsys, one_thread):
    encoder, target, _, path = official
    assert mmjepa_cli.main(["convert", "ijepa", str(path), "--output", str(tmp_path / "mm"), "--num-heads", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "predictor <- predictor" in line and "optimizer state" in line
    assert mmjepa_cli.main(["convert", "to-hf", str(tmp_path / "mm"), "--output", str(tmp_path / "hf")]) == 0
    assert "EMA target" in capsys.readouterr().out
    assert mmjepa_cli.main(["convert", "to-hf", str(tmp_path / "mm"), "--output", str(tmp_path / "hf_ctx"),
                            "--use-context-encoder"]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for folder, ref in (("hf", target), ("hf_ctx", encoder)):
            hf = IJepaModel.from_pretrained(tmp_path / folder).eval()
            torch.testing.assert_close(hf(pixel_values=x).last_hidden_state, ref(x), atol=1e-5, rtol=1e-5)


def test_cli_hf_source_gets_a_fresh_predictor(tmp_path, capsys):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    assert mmjepa_cli.main(["convert", "ijepa", str(tmp_path / "hf"), "--output", str(tmp_path / "mm")]) == 0
    line = capsys.readouterr().out.strip()
    assert "transformers IJepaModel" in line and "freshly initialised: predictor" in line
    model = MMJepaModel.from_pretrained(tmp_path / "mm")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(pixel_values=x)["image"], hf(pixel_values=x).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["convert", "ijepa", "missing/ckpt.pth.tar", "--output", "OUT"], "no such checkpoint file"),
    (["convert", "ijepa", "EMPTY", "--output", "OUT"], "without config.json"),
    (["convert", "ijepa", "HF", "--output", "OUT", "--num-heads", "4"], "an IJepaModel's config names its heads"),
    (["convert", "to-hf", "HF", "--output", "OUT"], "not an mmjepa model"),
    (["convert", "to-hf", "./nowhere", "--output", "OUT"], "no such folder"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    tiny_hf(num_hidden_layers=1).save_pretrained(tmp_path / "HF")
    capsys.readouterr()
    assert mmjepa_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
