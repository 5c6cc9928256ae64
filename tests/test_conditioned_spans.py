"""Span filling conditioned on another modality: the readout objective's ``context`` option
(own | all | both), raw inputs (``images=``, ``audio=``) in ``fill_spans`` / ``fill_spans_text``,
and the helpers of the ``tuxpaint_spans`` benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmjepa import MaskCollator, MMJepaModel
from mmjepa.bench.multimodal import conditioned_span_eval, derangement
from mmjepa.eval.spans import (conditioned_hits, fill_spans, fill_spans_text, paired_bootstrap, sequence_span_masks,
                                span_logits)
from mmjepa.masking import SpanMasking
from mmjepa.modalities import get_modality
from mmjepa.models.model import JepaView
from mmjepa.tokenizer import train_tokenizer

from test_multimodal import config, mixed_batch, sample
from test_text import corpus


def readout(context: str, weight: float = 1.0) -> dict:
    return {"readout": {"modality": "text", "context": context, "weight": weight}}


def model_with(context: str, modalities=("image", "text"), seed: int = 0) -> MMJepaModel:
    torch.manual_seed(seed)
    return MMJepaModel(config(list(modalities), objectives=readout(context)))


def paired_batch(model: MMJepaModel, n: int = 6, seed: int = 0) -> dict:
    """Image-caption pairs (every sample holds both)."""
    samples = [sample(seed * 10 + i, ["image", "text"]) for i in range(n)]
    return MaskCollator.from_config(model.config, seed=seed)(samples)


def split(batch: dict) -> tuple[dict, dict, dict]:
    b = dict(batch)
    return b, b.pop("masks"), b.pop("present")


def pil_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def text_ids(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 12) ids with a 2-token span masked in each row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 80, (n, 12), generator=g)
    mask = torch.zeros(n, 12, dtype=torch.bool)
    mask[:, 3:5] = True
    return ids, mask


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(texts=corpus(), vocab_size=80)


# ----------------------------------------------------------------------------- the objective
def test_own_context_is_exactly_the_readout_of_the_own_predictions():
    model = model_with("own")
    batch = paired_batch(model)
    out = model(**batch)
    assert set(out.losses) == {"readout/text"} and set(out.metrics) >= {"text/readout_acc"}
    assert "text/readout_acc_conditioned" not in out.metrics
    # today's computation, written out: the head on the text's own-context predictions
    b, masks, present = split(batch)
    view = JepaView(model, b, masks, present)
    tidx = masks["text"]["target"]  # (B, M, Kt)
    B, M, Kt = tidx.shape
    labels = torch.gather(b["input_ids"], 1, tidx.reshape(B, M * Kt)).reshape(-1)
    tv = masks["text"].get("target_valid")
    if tv is not None:
        labels = labels.masked_fill(~tv.reshape(-1), -100)
    logits = model.objectives["readout"].head(view.predictions("text")).reshape(B * M * Kt, -1).float()
    expected = F.cross_entropy(logits, labels, ignore_index=-100)
    assert torch.equal(out.losses["readout/text"], expected) and torch.equal(out.loss, expected)
    # and the image does not enter it: no gradient reaches the image encoder
    out.loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoders["image"].parameters())


def test_all_context_uses_the_image():
    model = model_with("all")
    batch = paired_batch(model)
    out = model(**batch)
    assert set(out.losses) == {"readout/text", "readout/text/conditioned"}
    assert {"text/readout_acc", "text/readout_acc_conditioned"} <= set(out.metrics)
    assert torch.equal(out.loss, out.losses["readout/text/conditioned"])
    out.loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.encoders["image"].parameters() if p.grad is not None) > 0
    other = dict(batch, pixel_values=batch["pixel_values"].flip(0))  # each caption gets another image
    with torch.no_grad():
        moved = model(**other)
    assert not torch.equal(moved.loss, out.loss.detach())
    torch.testing.assert_close(moved.losses["readout/text"], out.losses["readout/text"])  # own context: unchanged


def test_conditioned_predictions_match_span_logits_at_inference():
    """Training's conditioned prediction (own masked context + the image's full view) is what
    span_logits computes from the same tokens, span mask and image."""
    model = model_with("all").eval()
    batch = paired_batch(model, n=4)
    b, masks, present = split(batch)
    with torch.no_grad():
        pred = model.objectives["readout"].conditioned_predictions(JepaView(model, b, masks, present))  # (B, Kt, D)
        train_logits = model.objectives["readout"].logits(pred)  # (B, Kt, V)
    tidx, tv = masks["text"]["target"][:, 0], masks["text"].get("target_valid")  # (B, Kt)
    tv = torch.ones_like(tidx, dtype=torch.bool) if tv is None else tv[:, 0]
    span = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    span.scatter_(1, tidx, tv)
    logits, pos, valid = span_logits(model, b["input_ids"], span, b["input_ids_valid"], pixel_values=b["pixel_values"])
    valid = torch.ones_like(pos, dtype=torch.bool) if valid is None else valid
    for i in range(len(pos)):
        order = tidx[i][tv[i]].argsort()
        assert torch.equal(pos[i][valid[i]], tidx[i][tv[i]][order])
        torch.testing.assert_close(logits[i][valid[i]], train_logits[i][tv[i]][order], atol=1e-4, rtol=1e-4)


def test_both_averages_the_two_terms_and_is_the_mean_of_own_and_all():
    """On a mixed batch (a caption without image or sound among them), ``both`` = the mean of its
    two logged terms = the mean of the ``own`` and ``all`` losses of the same weights."""
    mods = ("image", "audio", "text")
    losses = {}
    state = model_with("own", mods).state_dict()
    for context in ("own", "all", "both"):
        model = model_with(context, mods)
        model.load_state_dict(state)
        with torch.no_grad():
            losses[context] = model(**mixed_batch(model.config))
    both = losses["both"]
    assert set(both.losses) == {"readout/text", "readout/text/conditioned"}
    assert {"text/readout_acc", "text/readout_acc_conditioned"} <= set(both.metrics)
    torch.testing.assert_close(both.loss, (both.losses["readout/text"] + both.losses["readout/text/conditioned"]) / 2)
    torch.testing.assert_close(both.loss, (losses["own"].loss + losses["all"].loss) / 2)
    torch.testing.assert_close(both.losses["readout/text"], losses["own"].loss)
    assert not torch.allclose(losses["own"].loss, losses["all"].loss)


def test_the_context_option_is_checked():
    with pytest.raises(ValueError, match="context must be one of"):
        model_with("images")


def test_a_text_only_batch_under_all_falls_back_to_the_own_context():
    model = model_with("all")
    samples = [sample(i, ["text"]) for i in range(4)]
    out = model(**MaskCollator.from_config(model.config, seed=0)(samples))
    torch.testing.assert_close(out.losses["readout/text/conditioned"], out.losses["readout/text"])


# ----------------------------------------------------------------------------- raw inputs
def test_fill_spans_takes_raw_images_like_their_pixel_values():
    model = model_with("all").eval()
    ids, mask = text_ids(3)
    images = pil_images(3)
    pixels = get_modality("image").build_processor(model.config.modality_config("image"))(images)["pixel_values"]
    raw = fill_spans(model, ids, mask, images=images)
    given = fill_spans(model, ids, mask, pixel_values=pixels)
    alone = fill_spans(model, ids, mask)
    torch.testing.assert_close(raw["logits"], given["logits"])
    assert torch.equal(raw["top_ids"], given["top_ids"])
    assert not torch.allclose(raw["logits"], alone["logits"])  # the image conditions the prediction


def test_fill_spans_takes_raw_audio_with_its_sampling_rate():
    model = model_with("all", ("audio", "text")).eval()
    ids, mask = text_ids(2)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(8000 + 2000 * i).astype(np.float32) * 0.1 for i in range(2)]
    feats = get_modality("audio").build_processor(model.config.modality_config("audio"))(clips, sampling_rate=8000)
    raw = fill_spans(model, ids, mask, audio=clips, sampling_rate=8000)
    given = fill_spans(model, ids, mask, **feats)
    torch.testing.assert_close(raw["logits"], given["logits"])


def test_fill_spans_text_takes_raw_images(tokenizer):
    model = model_with("all").eval()
    texts = ["The king <mask> the crown.", "Sweet <mask><mask> love."]
    images = pil_images(2, seed=1)
    pixels = get_modality("image").build_processor(model.config.modality_config("image"))(images)["pixel_values"]
    raw = fill_spans_text(model, tokenizer, texts, top_k=3, images=images)
    assert raw == fill_spans_text(model, tokenizer, texts, top_k=3, pixel_values=pixels)
    assert [len(spans) for spans in raw] == [1, 1]


def test_conditioning_errors_are_clear():
    model = model_with("all").eval()
    ids, mask = text_ids(3)
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['imgs'\].*images=.*pixel_values="):
        fill_spans(model, ids, mask, imgs=pil_images(3))
    with pytest.raises(ValueError, match=r"\['audio', 'sampling_rate'\] \(the model has no audio modality\)"):
        fill_spans(model, ids, mask, audio=[np.zeros(8000)], sampling_rate=8000)
    with pytest.raises(ValueError, match=r"batch size mismatch: 3 text sequence\(s\) but 2 image input\(s\) \(images=\)"):
        fill_spans(model, ids, mask, images=pil_images(2))
    pixels = torch.zeros(4, 3, 16, 16)
    with pytest.raises(ValueError, match="batch size mismatch.*pixel_values="):
        fill_spans(model, ids, mask, pixel_values=pixels)
    with pytest.raises(ValueError, match="either raw values"):
        fill_spans(model, ids, mask, images=pil_images(3), pixel_values=pixels[:3])
    with pytest.raises(ValueError, match="batch size mismatch"):
        fill_spans_text(model, train_tokenizer(texts=corpus(50), vocab_size=80), ["a <mask> b"], images=pil_images(2))
    audio_model = model_with("all", ("audio", "text")).eval()
    with pytest.raises(ValueError, match="sampling_rate= goes with raw audio input"):
        fill_spans(audio_model, ids, mask, sampling_rate=8000)


# ----------------------------------------------------------------------------- benchmark helpers
def test_sequence_span_masks_hide_and_keep_a_maskable_token_each():
    maskable = torch.zeros(4, 10, dtype=torch.bool)
    maskable[0, 1:9] = True
    maskable[1, 1:3] = True
    maskable[2, 1:2] = True  # one token: skipped
    maskable[3, 2:7] = True
    sampler = SpanMasking(10, 0.25, 2.0, 5)
    masks = sequence_span_masks(maskable, sampler, draws=5, seed=3)
    assert masks.shape == (4, 5, 10)
    assert torch.equal(masks, sequence_span_masks(maskable, sampler, draws=5, seed=3))
    assert not (masks & ~maskable[:, None]).any()
    assert not masks[2].any()
    for i in (0, 1, 3):
        n_masked = masks[i].sum(-1)
        assert (n_masked >= 1).all() and (n_masked < maskable[i].sum()).all()
    assert masks[0].unique(dim=0).shape[0] > 1  # the draws differ


def test_derangement_and_paired_bootstrap():
    perm = derangement(7, seed=2)
    assert sorted(perm.tolist()) == list(range(7)) and not (perm == torch.arange(7)).any()
    counts = torch.full((50,), 4)
    hits = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(0))
    assert paired_bootstrap(hits, hits, counts, num=200) == (0.0, 0.0)
    lo, hi = paired_bootstrap((hits + 1).clamp_max(4), hits, counts, num=200)
    assert 0 < lo <= hi


def test_conditioned_hits_and_the_benchmark_eval(tokenizer):
    model = model_with("both").eval()
    captions = ["The king loves the queen.", "Night.", "Sweet lady fair.", "Good noble heart speak.",
                "Come stay fly weep."]
    items = [{"text": t, "image": im} for t, im in zip(captions, pil_images(len(captions)))]
    res = conditioned_span_eval(model, items, ("image",), draws=3, tokenizer=tokenizer, bootstrap=100)
    for key in ("with_image_top1", "without_image_top1", "wrong_image_top1", "with_image_top5", "without_image_top5",
                "wrong_image_top5", "image_gain_top1", "image_gain_top1_ci95", "masked_tokens", "captions"):
        assert key in res, key
    n_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in captions]
    assert res["captions"] == sum(n >= 2 for n in n_tokens) and res["captions_skipped"] == sum(n < 2 for n in n_tokens)
    assert res["masked_tokens"] > 0
    for cond in ("with_image", "without_image", "wrong_image"):
        assert 0 <= res[f"{cond}_top1"] <= res[f"{cond}_top5"] <= 1
    assert res["image_gain_top1"] == pytest.approx(res["with_image_top1"] - res["without_image_top1"])
    lo, hi = res["image_gain_top1_ci95"]
    assert lo <= hi

    # conditioned_hits itself: the counts are the masked tokens, and "without" equals fill_spans alone
    enc = get_modality("text").build_processor(model.config.modality_config("text"), tokenizer=tokenizer)(captions)
    ids, att = enc["input_ids"], enc["attention_mask"].bool()
    maskable = att & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))  # (N, L)
    masks = sequence_span_masks(maskable, SpanMasking(12, 0.25, 2.0, 5), draws=2, seed=0)
    hits = conditioned_hits(model, ids, att, masks, {"none": {}, "own": {"images": [it["image"] for it in items]}},
                            batch_size=3)
    assert torch.equal(hits["none"][:, 2], masks.sum((1, 2)))
    keep = masks[:, 0].any(1)
    out = fill_spans(model, ids[keep], masks[keep, 0], top_k=1, attention_mask=att[keep])
    labels = ids[keep].gather(1, out["positions"])
    first_draw = conditioned_hits(model, ids, att, masks[:, :1], {"none": {}})["none"]
    assert int(first_draw[:, 0].sum()) == int(((out["top_ids"][..., 0] == labels) & out["valid"]).sum())
    # excluded ids are never predicted: with every id but one excluded, top-1 hits are that id's count
    k = int(ids[masks[:, 0]].mode().values)
    only_k = conditioned_hits(model, ids, att, masks[:, :1], {"none": {}},
                              exclude=[i for i in range(80) if i != k])["none"]
    assert int(only_k[:, 0].sum()) == int((ids[masks[:, 0]] == k).sum()) > 0
