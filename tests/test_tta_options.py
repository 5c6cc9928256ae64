"""Two time-to-accuracy options of the intra-modal objective, both off by default:
several mask sets per sample sharing one EMA-target pass (``mask_sets``), and the predictor
encoding the context once for all target blocks (``predictor_context_once``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmjepa import MaskCollator, MMJepaConfig, MMJepaModel
from mmjepa.engine import load_recipe
from mmjepa.engine.optim import build_optimizer
from mmjepa.models.predictor import block_attention_mask

from conftest import tiny_image_config, train_on_batch
from test_multimodal import OBJECTIVES, config as multimodal_config, mixed_batch

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Path(__file__).resolve().parent.parent / "recipes/image/digits_ijepa_cpu.yaml"


def images(config: MMJepaConfig, n: int, seed: int = 0) -> list[dict]:
    size = config.modality_config("image").image_size
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(3, size, size, generator=g)} for _ in range(n)]


def repeat_masks(batch: dict, R: int) -> dict:
    """The batch with every mask tensor repeated R times per sample (R identical mask sets)."""
    out = dict(batch)
    out["masks"] = {m: {k: v.repeat_interleave(R, 0) for k, v in ms.items()} for m, ms in batch["masks"].items()}
    return out


# ----------------------------------------------------------------------------- config
def test_both_options_are_off_by_default_and_set_from_a_recipe():
    c = MMJepaConfig()
    assert c.mask_sets == 1 and c.predictor_context_once is False
    r = load_recipe(RECIPE, ["model.mask_sets=4", "model.predictor_context_once=true"])
    cfg = r.model_config()
    assert cfg.mask_sets == 4 and cfg.predictor_context_once is True
    assert MaskCollator.from_config(cfg).mask_sets == 4
    with pytest.raises(ValueError, match="mask_sets"):
        tiny_image_config(mask_sets=0)
    with pytest.raises(TypeError, match="predictor_context_once"):
        tiny_image_config(predictor_context_once="yes")


# ----------------------------------------------------------------------------- (a) mask sets
def test_the_collator_draws_independent_mask_sets_per_sample():
    cfg1, cfg3 = tiny_image_config(), tiny_image_config(mask_sets=3)
    b1 = MaskCollator.from_config(cfg1, seed=0)(images(cfg1, 4))
    b3 = MaskCollator.from_config(cfg3, seed=0)(images(cfg3, 4))
    assert b3["pixel_values"].shape[0] == 4  # the inputs are not repeated
    ctx, tgt = b3["masks"]["image"]["context"], b3["masks"]["image"]["target"]
    assert ctx.shape[0] == 12 and tgt.shape[:2] == (12, 4)
    assert b1["masks"]["image"]["context"].shape[0] == 4
    # the sets of one sample differ (independent draws), for every sample
    for b in range(4):
        rows = tgt[b * 3:(b + 1) * 3].reshape(3, -1)
        assert not (torch.equal(rows[0], rows[1]) and torch.equal(rows[1], rows[2]))
    # mask_sets=1 is the collator as it always was: the same masks from the same seed
    plain = MaskCollator(MaskCollator.from_config(cfg1).modalities, seed=0)(images(cfg1, 4))
    for k in ("context", "target"):
        assert torch.equal(plain["masks"]["image"][k], b1["masks"]["image"][k])


def test_identical_mask_sets_give_the_single_set_loss_and_gradients():
    torch.manual_seed(0)
    cfg1, cfg3 = tiny_image_config(), tiny_image_config(mask_sets=3)
    m1 = MMJepaModel(cfg1)
    m3 = MMJepaModel(cfg3)
    m3.load_state_dict(m1.state_dict())
    batch = MaskCollator.from_config(cfg1, seed=0)(images(cfg1, 4))
    out1 = m1(**batch)
    out3 = m3(**repeat_masks(batch, 3))
    out1.loss.backward()
    out3.loss.backward()
    assert torch.allclose(out1.loss, out3.loss, atol=1e-6), (out1.loss.item(), out3.loss.item())
    assert out1.loss.item() > 0
    for (n, p1), p3 in zip(m1.named_parameters(), m3.parameters()):
        if p1.grad is None:
            assert p3.grad is None, n
            continue
        assert torch.allclose(p1.grad, p3.grad, atol=1e-6, rtol=1e-4), n
    # different sets give a different loss: the sets are really used
    m3.zero_grad()
    other = MaskCollator.from_config(cfg3, seed=0)(images(cfg3, 4))
    assert not torch.allclose(m3(**other).loss, m1(**MaskCollator.from_config(cfg1, seed=0)(images(cfg1, 4))).loss)


def test_the_loss_of_two_mask_sets_is_the_mean_of_their_single_set_losses():
    torch.manual_seed(0)
    cfg1, cfg2 = tiny_image_config(), tiny_image_config(mask_sets=2)
    m1, m2 = MMJepaModel(cfg1), MMJepaModel(cfg2)
    m2.load_state_dict(m1.state_dict())
    batch = MaskCollator.from_config(cfg2, seed=0)(images(cfg2, 4))
    sets = [dict(batch, masks={"image": {k: v[r::2] for k, v in batch["masks"]["image"].items()}}) for r in range(2)]
    assert not torch.equal(sets[0]["masks"]["image"]["target"], sets[1]["masks"]["image"]["target"])
    single = [m1(**b).loss for b in sets]
    assert torch.allclose(m2(**batch).loss, (single[0] + single[1]) / 2, atol=1e-6)


def test_the_target_encoder_runs_once_and_the_context_encoder_on_every_set():
    torch.manual_seed(0)
    R, B = 4, 3
    cfg = tiny_image_config(mask_sets=R)
    model = MMJepaModel(cfg)
    seen = {"target": [], "embed": [], "context_blocks": []}
    model.target_encoders["image"].register_forward_hook(lambda mod, args, out: seen["target"].append(out.shape[0]))
    model.encoders["image"].embed.register_forward_hook(lambda mod, args, out: seen["embed"].append(out.shape[0]))
    model.encoders["image"].transformer.register_forward_hook(
        lambda mod, args, out: seen["context_blocks"].append(args[0].shape[0]))
    batch = MaskCollator.from_config(cfg, seed=0)(images(cfg, B))
    out = model(**batch)
    assert seen["target"] == [B]  # one EMA-target pass per step, over the B samples
    assert seen["embed"] == [B]  # the patch embedding once per sample
    assert seen["context_blocks"] == [R * B]  # the context transformer on every mask set
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("option", [{"mask_sets": 4}, {"predictor_context_once": True}],
                         ids=["four_mask_sets", "context_once"])
def test_a_tiny_image_model_trains_with_the_option(option):
    torch.manual_seed(0)
    cfg = tiny_image_config(**option)
    model = MMJepaModel(cfg)
    batch = MaskCollator.from_config(cfg, seed=0)(images(cfg, 8))
    losses = train_on_batch(model, batch, steps=20)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_every_objective_of_a_multimodal_model_trains_with_two_mask_sets():
    """Cross-modal, pooled, contrastive, SIGReg and readout see the first mask set; intra
    (own context and every modality's context) uses both."""
    torch.manual_seed(0)
    objectives = {**OBJECTIVES, "intra_all": {"type": "intra", "context": "all"},
                  "readout": {"modality": "text"}}
    cfg = multimodal_config(objectives=objectives, mask_sets=2)
    model = MMJepaModel(cfg)
    batch = mixed_batch(cfg)
    assert batch["masks"]["audio"]["context"].shape[0] == 2 * batch["input_features"].shape[0]
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    for _ in range(2):
        out = model(**batch)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert {"intra/image", "intra/audio", "intra/text", "readout/text", "sigreg/image"} <= set(out.losses)
    assert {"pooled/text->image", "contrastive/image-text"} <= set(out.losses)


def test_a_hugging_face_backbone_encoder_takes_mask_sets_too():
    """A backbone embeds inside its own forward: its inputs are repeated per set instead."""
    from transformers import ViTConfig

    torch.manual_seed(0)
    hf = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, image_size=32, patch_size=4).to_dict()
    kw = dict(modalities={"image": {"image_size": 32, "patch_size": 4, "min_keep": 2}}, hidden_size=48,
              num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
              predictor_num_attention_heads=2, backbones={"image": {"config": hf}})
    m1, m2 = MMJepaModel(MMJepaConfig(**kw)), MMJepaModel(MMJepaConfig(**kw, mask_sets=2))
    m2.load_state_dict(m1.state_dict())
    batch = MaskCollator.from_config(m1.config, seed=0)(images(m1.config, 3))
    assert torch.allclose(m1(**batch).loss, m2(**repeat_masks(batch, 2)).loss, atol=1e-6)


def test_masks_drawn_for_another_number_of_sets_are_rejected():
    cfg1 = tiny_image_config()
    batch = MaskCollator.from_config(cfg1, seed=0)(images(cfg1, 2))
    with pytest.raises(ValueError, match="mask_sets=2"):
        MMJepaModel(tiny_image_config(mask_sets=2))(**batch)


# ----------------------------------------------------------------------------- (b) context once
def test_the_block_attention_mask_has_the_block_structure():
    got = block_attention_mask(2, 3, 2)
    c, a, b, d = [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 1, 1]
    want = torch.tensor([c, c, a, a, b, b, d, d], dtype=torch.bool)
    assert torch.equal(got, want)


def predictor_inputs(model: MMJepaModel, B: int = 2, Kc: int = 7, M: int = 4, Kt: int = 3, padded: bool = False,
                     seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N = model.predictor.pos_image.shape[0]
    z = torch.randn(B, Kc, model.config.hidden_size, generator=g)
    idx = torch.stack([torch.randperm(N, generator=g)[:Kc] for _ in range(B)])
    tidx = torch.stack([torch.stack([torch.randperm(N, generator=g)[:Kt] for _ in range(M)]) for _ in range(B)])
    cv = tv = None
    if padded:
        cv = torch.ones(B, Kc, dtype=torch.bool)
        cv[0, -2:] = False
        tv = torch.ones(B, M, Kt, dtype=torch.bool)
        tv[1, 2, -1] = False
    return [("image", z, idx, cv)], tidx, tv


def per_block_reference(pred, context, tidx, tv) -> torch.Tensor:
    """For each block m, the sequence [context, queries_m] run through the predictor's blocks with
    context rows attending only to context (and no row to padding) -> (B*M, Kt, De)."""
    x, valid, coords = pred.embed_context(context)  # (B, Nc, Dp)
    B, M, Kt = tidx.shape
    Nc = x.shape[1]
    out = []
    for b in range(B):
        for m in range(M):
            q = (pred.mask_token[0] + pred._position("image", tidx[b, m])).expand(Kt, -1)  # (Kt, Dp)
            seq = torch.cat([x[b], q], 0)[None]  # (1, Nc+Kt, Dp)
            mask = torch.ones(Nc + Kt, Nc + Kt, dtype=torch.bool)
            mask[:Nc, Nc:] = False  # the context does not attend to the queries
            keys = torch.cat([valid[b] if valid is not None else torch.ones(Nc, dtype=torch.bool),
                              tv[b, m] if tv is not None else torch.ones(Kt, dtype=torch.bool)])
            mask = mask & keys[None, :]
            rope = None
            if pred.rope is not None:
                rope = pred.rope(torch.cat([coords[b], pred._coords("image", tidx[b, m], pred.rope.ndim)], 0)[None])
            h = seq
            for blk in pred.transformer.blocks:
                h = blk(h, mask[None, None], rope)
            out.append(pred.predictor_proj(pred.transformer.norm(h)[0, Nc:]))
    return torch.stack(out)


@pytest.mark.parametrize("position", ["sincos", "rope"])
@pytest.mark.parametrize("padded", [False, True])
def test_context_once_equals_the_per_block_computation_with_the_same_semantics(position, padded):
    torch.manual_seed(0)
    model = MMJepaModel(tiny_image_config(predictor_context_once=True, position_embedding=position)).eval()
    with torch.no_grad():  # away from the init (tiny residual branches), so that attention matters
        for p in model.predictor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    context, tidx, tv = predictor_inputs(model, padded=padded)
    with torch.no_grad():
        got = model.predictor(context, "image", tidx, tv)  # (B*M, Kt, De)
        want = per_block_reference(model.predictor, context, tidx, tv)
        model.predictor.context_once = False  # I-JEPA: the context also attends to the block's queries
        default = model.predictor(context, "image", tidx, tv)
    assert got.shape == (2 * 4, 3, model.config.hidden_size)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (got - default).abs().max() > 1e-3  # a different function (~1e-2 here vs ~1e-7), as documented


def test_context_once_costs_fewer_predictor_flops_for_four_blocks():
    torch.manual_seed(0)
    model = MMJepaModel(tiny_image_config()).eval()
    context, tidx, tv = predictor_inputs(model, B=4, Kc=40, M=4, Kt=6)
    flops = {}
    for once in (False, True):
        model.predictor.context_once = once
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.predictor(context, "image", tidx, tv)
        flops[once] = fc.get_total_flops()
    assert 0 < flops[True] < 0.7 * flops[False], flops
