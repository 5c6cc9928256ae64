"""``context_mask_tokens``: the context encoder sees every token, the masked ones as a learned mask
embedding (BERT's / data2vec's input) instead of dropping them (I-JEPA)."""

from __future__ import annotations

import pytest
import torch

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.models import JepaView
from mmjepa.engine.optim import param_groups
from mmjepa.eval.spans import fill_spans
from mmjepa.layers import key_padding_to_attn_mask
from mmjepa.models.encoder import encode_context

from conftest import tiny_image_config, train_on_batch
from test_core import make_batch
from test_spans import LENGTH, VOCAB, text_batch, tokenizer  # noqa: F401 (a fixture)


def text_model(**overrides) -> MMJepaModel:
    kw = dict(modalities={"text": {"vocab_size": VOCAB, "max_length": LENGTH}}, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
              predictor_num_attention_heads=2, position_embedding="rope", context_mask_tokens=["text"])
    kw.update(overrides)
    return MMJepaModel(MMJepaConfig(**kw))


def by_hand(enc, inputs, keep, token_valid=None):
    """The encoder on every token with those outside ``keep`` replaced by the mask embedding (+ the
    added positions), written out."""
    x = enc.embed(inputs).clone()  # (B, N, D)
    B, N, _ = x.shape
    fill = enc.mask_embed + (enc.embed.pos_embed[0, :N] if enc.embed.add_positions else 0)  # (N, D) or (D,)
    for b in range(B):
        hidden = torch.ones(N, dtype=torch.bool)
        hidden[keep[b]] = False
        x[b, hidden] = fill[hidden] if fill.dim() == 2 else fill
    rope = enc.rope(enc.embed.coords[:N]) if enc.rope is not None else None
    return enc.transformer(x, key_padding_to_attn_mask(token_valid), rope)


@pytest.mark.parametrize("position_embedding", ["sincos", "rope"])
def test_hidden_tokens_become_the_mask_embedding(position_embedding):
    model = MMJepaModel(tiny_image_config(position_embedding=position_embedding, context_mask_tokens=["image"]))
    enc = model.encoders["image"]
    assert enc.mask_embed.shape == (32,) and enc.mask_embed.abs().sum() > 0  # initialised
    assert model.target_encoders["image"].mask_embed is not enc.mask_embed
    x = torch.randn(2, 3, 32, 32)
    keep = torch.stack([torch.randperm(64)[:20], torch.randperm(64)[:20]])  # (B, K)
    z, idx, valid = encode_context(enc, x, keep)
    assert z.shape == (2, 64, 32) and idx.tolist() == [list(range(64))] * 2 and valid is None
    torch.testing.assert_close(z, by_hand(enc, x, keep))
    # the hidden patches' pixels do not reach the output; a visible one's does
    other = x.clone().view(2, 3, 8, 4, 8, 4)
    hidden = [i for i in range(64) if i not in keep[0].tolist()][0]
    other[0, :, hidden // 8, :, hidden % 8, :] += 5.0
    torch.testing.assert_close(encode_context(enc, other.view(2, 3, 32, 32), keep)[0], z)
    other = x.clone().view(2, 3, 8, 4, 8, 4)
    seen = int(keep[0, 0])
    other[0, :, seen // 8, :, seen % 8, :] += 5.0
    assert not torch.allclose(encode_context(enc, other.view(2, 3, 32, 32), keep)[0], z)
    # without the option the same call returns the kept tokens only
    plain = MMJepaModel(tiny_image_config(position_embedding=position_embedding))
    assert plain.encoders["image"].mask_embed is None
    assert encode_context(plain.encoders["image"], x, keep)[0].shape == (2, 20, 32)


def test_padding_in_the_kept_indices_and_in_the_input_is_ignored():
    model = text_model()
    enc = model.encoders["text"]
    ids = torch.randint(5, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    real = torch.ones(2, LENGTH, dtype=torch.bool)
    real[1, 15:] = False  # sample 1 is 15 tokens long
    keep = torch.tensor([[0, 2, 3, 9, 20], [1, 4, 5, 0, 0]])
    keep_valid = torch.tensor([[True] * 5, [True, True, True, False, False]])  # the 0s of row 1 are padding
    z, idx, valid = encode_context(enc, ids, keep, keep_valid, real)
    assert torch.equal(valid, real)
    torch.testing.assert_close(z, by_hand(enc, ids, [keep[0], keep[1, :3]], real))
    ids2 = ids.clone()
    ids2[1, 15:] = 7  # padding tokens: outside attention
    torch.testing.assert_close(encode_context(enc, ids2, keep, keep_valid, real)[0][:, :15], z[:, :15])
    # R mask sets per sample: row b*R + r is sample b with set r
    keep_r = torch.tensor([[0, 1, 2], [5, 6, 7], [3, 4, 8], [9, 10, 11]])
    z_r, idx_r, valid_r = encode_context(enc, ids, keep_r, None, real, repeats=2)
    assert z_r.shape == (4, LENGTH, 32) and torch.equal(valid_r, real.repeat_interleave(2, 0))
    torch.testing.assert_close(z_r[2], encode_context(enc, ids[1:], keep_r[2:3], None, real[1:])[0][0])


def test_training_reaches_the_mask_embedding_and_the_loss_falls(tokenizer):
    model = text_model()
    batch = text_batch(model, tokenizer, n=8)
    out = model(**batch)
    out.loss.backward()
    enc = model.encoders["text"]
    assert enc.mask_embed.grad.abs().sum() > 0
    assert model.target_encoders["text"].mask_embed.grad is None
    decayed = {id(p) for p in param_groups(model, 0.1)[0]["params"]}
    assert id(enc.mask_embed) not in decayed  # a learned token, not a weight
    model.zero_grad()
    losses = train_on_batch(model, batch, 30)
    assert losses[-1] < 0.7 * losses[0]


def test_span_filling_never_sees_the_masked_ids_and_round_trips(tmp_path):
    model = text_model().eval()
    ids = torch.randint(5, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(3))
    span = torch.zeros(2, LENGTH, dtype=torch.bool)
    span[0, 4:7], span[1, 10:12] = True, True
    logits = fill_spans(model, ids, span)["logits"]
    other = ids.clone()
    other[span] = 5 + (ids[span] + 1) % (VOCAB - 5)  # other tokens under the mask
    torch.testing.assert_close(fill_spans(model, other, span)["logits"], logits)
    other = ids.clone()
    other[0, 0] = 5 + (ids[0, 0] + 1) % (VOCAB - 5)  # a visible token does matter
    assert not torch.allclose(fill_spans(model, other, span)["logits"][0], logits[0])
    model.save_pretrained(tmp_path)
    loaded = MMJepaModel.from_pretrained(tmp_path).eval()
    assert loaded.config.context_mask_tokens == ["text"]
    torch.testing.assert_close(fill_spans(loaded, ids, span)["logits"], logits)


def test_a_mask_set_per_sample_and_a_subset_keep_the_option():
    config = tiny_image_config(context_mask_tokens=["image"], mask_sets=2)
    model = MMJepaModel(config)
    out = model(**make_batch(config))
    assert torch.isfinite(out.loss)
    assert config.subset(["image"]).context_mask_tokens == ["image"]


@pytest.mark.parametrize("value, error, match", [
    (["text"], ValueError, "no 'text' modality"),
    ("image", TypeError, "list of modality names"),
    ([1], TypeError, "list of modality names"),
])
def test_bad_values_are_refused(value, error, match):
    with pytest.raises(error, match=match):
        tiny_image_config(context_mask_tokens=value)


def test_the_encoder_latents_at_the_masked_positions_start_the_queries(tokenizer):
    model = text_model()
    batch = text_batch(model, tokenizer)
    view = JepaView(model, batch, batch["masks"])
    tgt = batch["masks"]["text"]["target"]  # (B, M, Kt)
    z = view.context("text")[0]  # (B, N, D): every token
    ql = view.query_latents("text")
    B, M, Kt = tgt.shape
    assert ql.shape == (B * M, Kt, 32)
    torch.testing.assert_close(ql[0, 0], z[0, tgt[0, 0, 0]])
    contexts = [("text", *view.context("text"))]
    pred = view.predictions("text")
    torch.testing.assert_close(pred, model.predictor(contexts, "text", tgt, batch["masks"]["text"].get("target_valid"), ql))
    assert not torch.allclose(pred, model.predictor(contexts, "text", tgt, batch["masks"]["text"].get("target_valid")))
    plain = text_model(context_mask_tokens=None)
    assert JepaView(plain, batch, batch["masks"]).query_latents("text") is None
