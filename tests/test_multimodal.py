"""The tri-modal model: any subset of modalities per sample, cross-modal and pooled prediction,
contrastive alignment, supervision, collapse monitors, embeddings and retrieval by prediction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmjepa import MaskCollator, MMJepaConfig, MMJepaModel
from mmjepa.engine import CollapseError, Trainer, load_recipe, train
from mmjepa.models.monitors import rankme
from mmjepa.objectives.contrastive import Contrastive, ContrastiveConfig

MODS = {"image": {"image_size": 16, "patch_size": 4, "mask": "random", "mask_ratio": 0.5},
        "audio": {"num_mel_bins": 32, "max_frames": 64, "patch_size": 16, "mask": "multiblock", "min_keep": 0},
        "text": {"vocab_size": 80, "max_length": 12}}
ALL = ["image", "audio", "text"]


def config(modalities=ALL, objectives=None, **kw) -> MMJepaConfig:
    return MMJepaConfig(modalities={m: MODS[m] for m in modalities}, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
                        predictor_num_attention_heads=2, objectives=objectives, **kw)


def sample(i: int, mods=ALL, label: int | None = None) -> dict:
    """Per-sample model inputs of the given modalities, derived from a class label (so that the
    modalities of a sample carry the same information)."""
    g = torch.Generator().manual_seed(i)
    y = i % 3 if label is None else label
    s = {"label": y}
    if "image" in mods:
        s["pixel_values"] = torch.randn(3, 16, 16, generator=g) * 0.3 + (y - 1)
    if "audio" in mods:
        n = 32 + 16 * (i % 3)  # 2, 3 or 4 real time patches
        f = torch.zeros(32, 64)
        f[:, :n] = torch.randn(32, n, generator=g) * 0.3 + (y - 1)
        s["input_features"], s["input_features_valid"] = f, (torch.arange(4) < n // 16).repeat(2)
    if "text" in mods:
        L = 6 + i % 5
        ids = torch.zeros(12, dtype=torch.long)
        ids[:L] = 5 + 10 * y + torch.randint(0, 10, (L,), generator=g)
        s["input_ids"], s["attention_mask"] = ids, (torch.arange(12) < L).long()
    return s


def mixed_batch(cfg: MMJepaConfig, seed: int = 0) -> dict:
    """Triples, image-text and audio-text pairs, and single modalities in one batch."""
    layout = [ALL, ALL, ["image", "text"], ["audio", "text"], ["image"], ["audio"], ["image", "audio"], ["text"]]
    samples = [sample(seed * 8 + i, [m for m in mods if m in cfg.modalities]) for i, mods in enumerate(layout)]
    return MaskCollator.from_config(cfg, seed=seed)([s for s in samples if len(s) > 1])


OBJECTIVES = {"intra": {}, "cross": {}, "pooled": {"weight": 0.5}, "contrastive": {"weight": 0.2},
              "sigreg": {"weight": 0.05}}


def test_the_collator_keeps_only_the_samples_that_hold_a_modality():
    cfg = config(objectives={"intra": {}})
    batch = mixed_batch(cfg)
    assert batch["present"]["image"].tolist() == [0, 1, 2, 4, 6]
    assert batch["present"]["audio"].tolist() == [0, 1, 3, 5, 6]
    assert batch["present"]["text"].tolist() == [0, 1, 2, 3, 7]
    assert batch["pixel_values"].shape[0] == 5 and batch["input_ids"].shape[0] == 5
    assert batch["masks"]["audio"]["context"].shape[0] == 5 and batch["label"].shape == (8,)
    assert "attention_mask" not in batch  # read by the text plug-in, not passed through


def test_every_term_of_a_mixed_batch_is_finite_and_named():
    torch.manual_seed(0)
    cfg = config(objectives=OBJECTIVES)
    out = MMJepaModel(cfg)(**mixed_batch(cfg))
    assert torch.isfinite(out.loss)
    names = set(out.losses)
    assert {"intra/image", "intra/audio", "intra/text", "sigreg/image"} <= names
    assert {"contrastive/image-audio", "contrastive/image-text", "contrastive/audio-text"} <= names
    assert any(n.startswith("cross/") and n.endswith("->image") for n in names) or \
           any(n.startswith("cross/") for n in names)
    assert {"pooled/text->image", "pooled/image->text", "pooled/audio+text->image"} <= names
    for m in ALL:
        assert {f"monitor/{m}/embed_std", f"monitor/{m}/rankme", f"monitor/{m}/target_var"} <= set(out.metrics)


def test_a_sample_without_a_modality_contributes_nothing_to_its_terms():
    """Sample 1 holds audio and text but no image: changing its audio and text changes the audio
    and text terms, and none of the image terms (same token counts, so the same masks)."""
    torch.manual_seed(0)
    cfg = config(objectives={"intra": {}, "pooled": {}, "cross": {"probs": {"image": 1.0, "audio": 0.0, "text": 0.0}}})
    model = MMJepaModel(cfg).eval()  # (in training mode each forward also moves the embedding centres)
    col = lambda ss: MaskCollator.from_config(cfg, seed=0)(ss)  # noqa: E731
    samples = [sample(0), sample(2, ["audio", "text"]), sample(4, ["image", "audio"])]
    torch.manual_seed(1)
    base = model(**col(samples)).losses
    moved = [sample(0), sample(2, ["audio", "text"]), sample(4, ["image", "audio"])]
    moved[1]["input_features"] = moved[1]["input_features"] * -2.0
    moved[1]["input_ids"] = torch.where(moved[1]["attention_mask"].bool(), moved[1]["input_ids"] + 3, 0)
    torch.manual_seed(1)
    out = model(**col(moved)).losses
    image_terms = [k for k in base if k.endswith("image")]
    assert {"intra/image", "pooled/audio+text->image", "pooled/audio->image", "cross/audio+text->image",
            "cross/audio->image"} <= set(image_terms)
    for k in image_terms:
        assert torch.equal(base[k], out[k]), k
    for k in ("intra/text", "intra/audio", "pooled/audio->text"):
        assert not torch.equal(base[k], out[k]), k


def test_cross_prediction_trains_the_predictor_and_the_other_modalities_only():
    torch.manual_seed(0)
    cfg = config(["image", "audio"], objectives={"cross": {"probs": {"image": 1.0, "audio": 0.0}}})
    model = MMJepaModel(cfg)
    samples = [sample(i, ["image", "audio"]) for i in range(6)]
    out = model(**MaskCollator.from_config(cfg, seed=0)(samples))
    assert set(out.losses) == {"cross/audio->image"}  # every image hidden, predicted from audio
    out.loss.backward()
    assert model.encoders["audio"].embed.proj.weight.grad.abs().sum() > 0
    assert model.predictor.predictor_proj.weight.grad.abs().sum() > 0
    assert model.encoders["image"].embed.proj.weight.grad is None  # the hidden modality's encoder is not used
    assert all(p.grad is None for p in model.target_encoders.parameters())


@pytest.mark.parametrize("modalities", [["image", "text"], ALL])
def test_two_and_three_modality_models_learn(modalities):
    torch.manual_seed(0)
    cfg = config(modalities, objectives=OBJECTIVES)
    model = MMJepaModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        out = model(**mixed_batch(cfg, seed=step % 5))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_target(0.99)
        losses.append(float(out.loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_embed_is_deterministic_normalised_and_predicts_across_modalities():
    torch.manual_seed(0)
    cfg = config(objectives=OBJECTIVES)
    model = MMJepaModel(cfg).eval()
    batch = MaskCollator.from_config(cfg)([sample(i) for i in range(4)])
    inputs = {k: batch[k] for k in ("pixel_values", "input_features", "input_features_valid", "input_ids",
                                    "input_ids_valid")}
    a, b = model.embed(**inputs), model.embed(**inputs)
    for m in ALL:
        assert a[m].shape == (4, 32) and torch.equal(a[m], b[m])
        assert torch.allclose(a[m].norm(dim=-1), torch.ones(4), atol=1e-5)
    audio_only = {k: inputs[k] for k in ("input_features", "input_features_valid")}
    pred = model.predict_embedding("image", **audio_only)
    assert pred.shape == (4, 32) and torch.allclose(pred.norm(dim=-1), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match="another modality"):
        model.predict_embedding("image", pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="no pooled objective"):
        MMJepaModel(config(objectives={"intra": {}})).predict_embedding("image", **audio_only)


def test_infonce_matches_the_clip_loss():
    cfg = ContrastiveConfig(type="contrastive", temperature=0.1, learn_temperature=False)
    obj = Contrastive(cfg, config(objectives={"intra": {}}))
    a, b = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    logits = a @ b.T / 0.1
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6)))
    assert torch.allclose(obj.pair_loss(a, b), ref, atol=1e-5)
    sig = Contrastive(ContrastiveConfig(type="contrastive", kind="siglip", temperature=0.1, bias=-2.0),
                      config(objectives={"intra": {}}))
    sign = 2 * torch.eye(6) - 1
    ref = -F.logsigmoid(sign * (a @ b.T * math.exp(math.log(10.0)) - 2.0)).sum(1).mean()
    assert torch.allclose(sig.pair_loss(a, b), ref, atol=1e-4)


def test_supervised_objective_uses_the_labels():
    torch.manual_seed(0)
    cfg = config(["image", "audio"], objectives={"supervised": {"num_classes": 3}})
    out = MMJepaModel(cfg)(**mixed_batch(cfg))
    assert set(out.losses) == {"supervised/image", "supervised/audio"} and "image/train_acc" in out.metrics
    with pytest.raises(ValueError, match="num_classes"):
        config(objectives={"supervised": {}})


def test_rankme():
    assert float(rankme(torch.randn(64, 16))) > 12
    assert float(rankme(torch.randn(64, 1) * torch.ones(1, 16))) < 1.1  # one direction
    assert float(rankme(torch.randn(1, 16).expand(64, 16) + 5.0)) == 1.0  # one point
    assert float(rankme(torch.randn(64, 16) + 100.0)) > 12  # an offset is no collapse


def test_the_collapse_monitor_fires_on_a_collapsed_model_and_not_on_a_healthy_one(tmp_path):
    recipe = {"model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1,
                        "predictor_num_attention_heads": 2,
                        "modalities": {"image": {"image_size": 32, "patch_size": 4, "num_channels": 1,
                                                 "image_mean": [0.5], "image_std": [0.5], "min_keep": 2}}},
              "data": {"sources": [{"type": "builtin", "name": "digits"}], "batch_size": 16, "num_workers": 0},
              "optim": {"lr": 1e-3},
              "train": {"max_steps": 4, "log_every": 2, "tracker": "none", "progress": False,
                        "collapse_floors": {"rankme": 1.5, "embed_std": 1e-3}, "stop_on_collapse": True}}
    healthy = train(load_recipe(recipe, [f"train.output_dir={tmp_path / 'ok'}"]))
    assert healthy.steps == 4 and healthy.history[-1]["monitor/image/rankme"] > 1.5

    def collapse(model):  # every target encoder output the same vector: zero the last norm's scale
        torch.nn.init.zeros_(model.target_encoders["image"].transformer.norm.weight)

    r = load_recipe(recipe, [f"train.output_dir={tmp_path / 'bad'}", "train.max_steps=40"])
    trainer = Trainer(r)
    collapse(trainer.unwrapped)
    trainer.unwrapped.config.ema_momentum_start = trainer.unwrapped.config.ema_momentum_end = 1.0
    with pytest.raises(CollapseError, match=r"collapse at step 2: image/(embed_std|rankme) .* state saved in"):
        trainer.run()
    assert (tmp_path / "bad" / "checkpoints" / "step_00000002").is_dir()


def test_a_batch_no_objective_applies_to_gives_a_zero_loss():
    """A contrastive-only model fed a batch without any pair (the low-pair regime) skips it."""
    cfg = config(["image", "audio"], objectives={"contrastive": {}})
    model = MMJepaModel(cfg)
    batch = MaskCollator.from_config(cfg)([sample(0, ["image"]), sample(1, ["audio"]), sample(2, ["image"])])
    out = model(**batch)
    assert float(out.loss) == 0.0 and out.losses == {} and float(out.metrics["skipped_batch"]) == 1.0
    out.loss.backward()  # no gradient, no error


def test_embedding_centres_follow_the_training_batches():
    torch.manual_seed(0)
    cfg = config(["image", "audio"], objectives={"intra": {}})
    model = MMJepaModel(cfg)
    assert torch.equal(model.centers.get("image"), torch.zeros(32))
    batch = MaskCollator.from_config(cfg)([sample(i, ["image", "audio"] if i % 2 else ["image"]) for i in range(6)])
    model(**batch)
    first = model.centers.get("image").clone()
    inputs = {"pixel_values": batch["pixel_values"]}
    assert torch.allclose(first, model.embed(center=False, normalize=False, **inputs)["image"].mean(0), atol=1e-5)
    model(**batch)  # the same batch: the running mean stays
    assert torch.allclose(model.centers.get("image"), first, atol=1e-6)
    model.eval()(**batch)  # evaluation does not move it
    assert int(model.centers.count_image) == 2
    e = model.embed(**inputs)["image"]
    assert torch.allclose(e, F.normalize(model.embed(center=False, normalize=False, **inputs)["image"] - first, dim=-1),
                          atol=1e-5)
