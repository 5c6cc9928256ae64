"""The JEPA core: EMA direction, gradient flow, the I-JEPA computation, losses, config, round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.models.ema import momentum_at
from mmjepa.layers import gather_tokens
from mmjepa.objectives import latent_loss, sigreg
from mmjepa.collate import MaskCollator
from mmjepa.engine.optim import build_optimizer, param_groups

from conftest import tiny_image_config, train_on_batch


def make_batch(config: MMJepaConfig, batch_size: int = 4, seed: int = 0) -> dict:
    mcfg = config.modality_config("image")
    col = MaskCollator.from_config(config, seed=seed)
    g = torch.Generator().manual_seed(seed)
    size = mcfg.image_size
    return col([{"pixel_values": torch.randn(3, size, size, generator=g)} for _ in range(batch_size)])


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_targets_start_as_copies_and_have_no_grad(tiny_config):
    model = MMJepaModel(tiny_config)
    for a, b in zip(model.encoders.parameters(), model.target_encoders.parameters()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in model.target_encoders.parameters())


def test_gradients_reach_context_and_predictor_but_not_targets(tiny_config):
    model = MMJepaModel(tiny_config)
    out = model(**make_batch(tiny_config))
    out.loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("target_encoders."):
            assert p.grad is None, name
        elif p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_ema_moves_target_towards_context_never_the_reverse(tiny_config):
    model = MMJepaModel(tiny_config)
    opt = build_optimizer(model, lr=1e-2)
    model(**make_batch(tiny_config)).loss.backward()
    opt.step()
    online_before, target_before = params(model.encoders), params(model.target_encoders)
    dist_before = sum((a - b).norm().item() for a, b in zip(online_before, target_before))
    assert dist_before > 0
    model.update_target(0.9)
    online_after, target_after = params(model.encoders), params(model.target_encoders)
    dist_after = sum((a - b).norm().item() for a, b in zip(online_after, target_after))
    assert all(torch.equal(a, b) for a, b in zip(online_before, online_after)), "EMA changed the context encoder"
    assert dist_after == pytest.approx(0.9 * dist_before, rel=1e-4)
    for t0, t1, o in zip(target_before, target_after, online_before):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * o, atol=1e-6)
    model.update_target(1.0)
    assert all(torch.equal(a, b) for a, b in zip(target_after, params(model.target_encoders)))


def test_momentum_schedule():
    assert momentum_at(0, 100) == pytest.approx(0.996)
    assert momentum_at(50, 100) == pytest.approx(0.998)
    assert momentum_at(100, 100) == pytest.approx(1.0)
    assert momentum_at(500, 100) == pytest.approx(1.0)


def test_loss_falls_on_a_fixed_batch(tiny_config):
    model = MMJepaModel(tiny_config)
    batch = make_batch(tiny_config, batch_size=8)
    losses = train_on_batch(model, batch, steps=40)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def reference_ijepa_loss(model: MMJepaModel, batch: dict) -> torch.Tensor:
    """The I-JEPA training loss written the way the paper's code computes it (mask-major repeats)."""
    x, masks = batch["pixel_values"], batch["masks"]["image"]
    ctx, tgt = masks["context"], masks["target"]
    B, M, Kt = tgt.shape
    enc, target_enc, pred = model.encoders["image"], model.target_encoders["image"], model.predictor
    with torch.no_grad():
        h = F.layer_norm(target_enc(x), (model.config.hidden_size,))
        h = torch.cat([gather_tokens(h, tgt[:, m]) for m in range(M)], 0)  # (M*B, Kt, D)
    z = enc(x, ctx)  # (B, Kc, D)
    pos = pred.pos_image  # (N, Dp)
    z = pred.predictor_embed(z) + pos[ctx]
    z = z.repeat(M, 1, 1)  # (M*B, Kc, Dp)
    q = torch.cat([pred.mask_token + pos[tgt[:, m]] for m in range(M)], 0)  # (M*B, Kt, Dp)
    out = pred.transformer(torch.cat([z, q], 1))[:, z.shape[1]:]
    return F.smooth_l1_loss(pred.predictor_proj(out), h)


def test_forward_matches_reference_ijepa_computation(tiny_config):
    model = MMJepaModel(tiny_config)
    batch = make_batch(tiny_config)
    assert torch.allclose(model(**batch).loss, reference_ijepa_loss(model, batch), atol=1e-6)


def test_encoder_computes_only_the_kept_tokens(tiny_config):
    model = MMJepaModel(tiny_config)
    enc = model.encoders["image"]
    x = torch.randn(2, 3, 32, 32)
    full = enc(x)  # (B, N, D)
    everything = torch.arange(64).expand(2, 64)
    assert torch.allclose(enc(x, everything), full, atol=1e-6)
    perm = torch.stack([torch.randperm(64), torch.randperm(64)])
    assert torch.allclose(enc(x, perm), gather_tokens(full, perm), atol=1e-5)  # positions travel with tokens
    keep = perm[:, :10]
    assert enc(x, keep).shape == (2, 10, 32)


def test_padding_mask_leaves_real_tokens_unchanged(tiny_config):
    model = MMJepaModel(tiny_config)
    enc = model.encoders["image"]
    x = torch.randn(1, 3, 32, 32)
    keep = torch.arange(20).unsqueeze(0)
    alone = enc(x, keep)
    padded_keep = torch.cat([keep, torch.zeros(1, 5, dtype=torch.long)], 1)
    valid = torch.cat([torch.ones(1, 20, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.bool)], 1)
    assert torch.allclose(enc(x, padded_keep, valid)[:, :20], alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["smooth_l1", "l1", "l2"])
def test_losses(kind):
    p, t = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    full = latent_loss(p, t, kind)
    assert full > 0 and torch.isfinite(full)
    valid = torch.ones(3, 5, dtype=torch.bool)
    assert torch.allclose(latent_loss(p, t, kind, valid), full, atol=1e-6)
    valid[:, 3:] = False  # padding entries must not count
    t2 = t.clone()
    t2[:, 3:] += 100.0
    assert torch.allclose(latent_loss(p, t2, kind, valid), latent_loss(p[:, :3], t[:, :3], kind), atol=1e-6)


@pytest.mark.parametrize("bad, factor", [("scaled", 0.1), ("shifted", None), ("collapsed", None)])
def test_sigreg_is_small_only_for_a_standard_gaussian(bad, factor):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 32, generator=g)
    good = sigreg(z, generator=torch.Generator().manual_seed(1))
    wrong = {"scaled": z * 0.1, "shifted": z + 1.0, "collapsed": z[:, :1].expand(-1, 32)}[bad]
    assert good < 1.0 < 10 * good < sigreg(wrong, generator=torch.Generator().manual_seed(1))
    # its gradient pulls a shrunken batch outwards (the anti-collapse direction)
    small = (z * 0.1).requires_grad_()
    sigreg(small, generator=torch.Generator().manual_seed(1)).backward()
    assert (small.grad * small).sum() < 0


@pytest.mark.parametrize("on", ["samples", "tokens"])
def test_model_sigreg_option_adds_its_loss(on):
    config = tiny_image_config(objectives={"intra": {}, "sigreg": {"weight": 0.1, "over": on}})
    model = MMJepaModel(config)
    batch = make_batch(config)
    torch.manual_seed(0)
    out = model(**batch)
    base = MMJepaModel(tiny_image_config())
    base.load_state_dict(model.state_dict())
    plain = base(**batch)
    assert set(out.losses) == {"intra/image", "sigreg/image"} and out.losses["sigreg/image"] > 0
    assert torch.allclose(out.loss, plain.loss + 0.1 * out.losses["sigreg/image"], atol=1e-6)
    out.loss.backward()
    assert model.encoders["image"].embed.proj.weight.grad is not None


@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_model_loss_types(loss_type):
    config = tiny_image_config(objectives={"intra": {"loss": loss_type}})
    out = MMJepaModel(config)(**make_batch(config))
    assert torch.isfinite(out.loss) and {"image/pred_std", "image/target_std"} <= set(out.metrics)
    assert {"monitor/image/embed_std", "monitor/image/rankme", "monitor/image/target_var"} <= set(out.metrics)


def test_rope_variant_trains(tiny_config):
    config = tiny_image_config(position_embedding="rope")
    model = MMJepaModel(config)
    out = model(**make_batch(config))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.encoders["image"].embed.proj.weight.grad is not None


def test_rope_text_shorter_than_max_length_encodes_as_padded():
    """RoPE positions of a text shorter than ``max_length`` are its first ones: the same latents as
    the padded text with its padding masked."""
    config = MMJepaConfig(modalities={"text": {"vocab_size": 50, "max_length": 12}}, hidden_size=32,
                          num_hidden_layers=1, num_attention_heads=2, predictor_hidden_size=16,
                          predictor_num_hidden_layers=1, predictor_num_attention_heads=2, position_embedding="rope")
    model = MMJepaModel(config).eval()
    ids = torch.randint(5, 50, (2, 12))
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[:, :7] = 1
    short = model.encode(input_ids=ids[:, :7])["text"]  # (2, 7, D)
    padded = model.encode(input_ids=ids, attention_mask=mask)["text"]
    assert short.shape == (2, 7, 32) and torch.allclose(short, padded[:, :7], atol=1e-5)


def test_save_load_round_trip(tmp_path, tiny_config):
    from transformers import AutoModel

    model = MMJepaModel(tiny_config)
    opt = build_optimizer(model, lr=1e-2)
    batch = make_batch(tiny_config)
    model(**batch).loss.backward()
    opt.step()
    model.update_target(0.5)  # targets now differ from the encoders: both must round-trip
    model.save_pretrained(tmp_path)
    model.eval()  # a training forward moves the embedding centres; compare the saved state only
    for loaded in (MMJepaModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, MMJepaModel)
        loaded.eval()
        sd, sd2 = model.state_dict(), loaded.state_dict()
        assert sd.keys() == sd2.keys()
        assert all(torch.equal(sd[k], sd2[k]) for k in sd)
        assert torch.equal(model(**batch).loss, loaded(**batch).loss)
        e1, e2 = model.embed(pixel_values=batch["pixel_values"]), loaded.embed(pixel_values=batch["pixel_values"])
        assert torch.equal(e1["image"], e2["image"])


def test_embed_is_normalised(tiny_config):
    model = MMJepaModel(tiny_config)
    emb = model.embed(pixel_values=torch.randn(3, 3, 32, 32))["image"]
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_no_decay_groups(tiny_config):
    model = MMJepaModel(tiny_config)
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert all(not n.endswith(".bias") and "norm" not in n and "mask_token" not in n for n in names)
    assert "encoders.image.transformer.blocks.0.attn.qkv.weight" in names


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(objectives={"intra": {"loss": "huber"}}), "objectives.intra: loss must be one of"),
        (dict(objectives={"intra": {"los": "l1"}}), "unknown intra objective option"),
        (dict(objectives={"contrast": {}}), "unknown objective type 'contrast'"),
        (dict(objectives={"readout": {"modality": "image"}}), "no vocab_size"),
        (dict(objectives={"readout": {"modality": "text"}}), "no 'text' modality"),
        (dict(objectives={}), "at least one objective"),
        (dict(hidden_size=30), "hidden_size"),
        (dict(position_embedding="alibi"), "position_embedding"),
        (dict(modalities={"smell": {}}), "unknown modality"),
        (dict(modalities={"image": {"patchsize": 4}}), "patchsize"),
        (dict(modalities={"image": {"image_size": 30, "patch_size": 4}}), "multiple of patch_size"),
        (dict(ema_momentum_start=1.2), "ema_momentum"),
        (dict(objectives={"sigreg": {"over": "patches"}}), "objectives.sigreg: over must be"),
        (dict(objectives={"sigreg": {"weight": -1.0}}), "weight must be >= 0"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_image_config(**overrides)


def test_presets():
    config = MMJepaConfig.from_preset("base")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    with pytest.raises(ValueError, match="preset"):
        MMJepaConfig.from_preset("huge")


def test_forward_errors(tiny_config):
    model = MMJepaModel(tiny_config)
    with pytest.raises(ValueError, match="masks"):
        model(pixel_values=torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        model.embed()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model.embed(pixel_values=torch.randn(2, 3, 16, 16))
