"""Masked-span prediction: the readout loss, fill_spans, the text helper and `mmjepa eval spans`."""

from __future__ import annotations

import json

import pytest
import torch

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.masking import MaskCollator
from mmjepa.modalities.text import SpanMasking, TextModality, TextProcessor
from mmjepa.spans import (chunk_ids, fill_spans_text, main_spans, masked_token_accuracy, mmjepa_predictor,
                          span_masks)
from mmjepa.tokenizer import train_tokenizer

from test_text import WORDS, corpus

VOCAB, LENGTH = 80, 24


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(texts=corpus(), vocab_size=VOCAB)


def tiny_model(**text) -> MMJepaModel:
    cfg = MMJepaConfig(modalities={"text": {"vocab_size": VOCAB, "max_length": LENGTH, **text}}, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, predictor_hidden_size=16,
                       predictor_num_hidden_layers=1, predictor_num_attention_heads=2)
    return MMJepaModel(cfg)


def cycle_text(n: int, seed: int = 0) -> list[str]:
    """A learnable language: runs of the word list in a fixed cyclic order from random offsets."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[(o + i) % len(WORDS)] for i in range(10)) for o in torch.randint(len(WORDS), (n,), generator=g).tolist()]


def text_batch(model: MMJepaModel, tokenizer, n: int = 4, seed: int = 0, texts: list[str] | None = None) -> dict:
    cfg = model.config.modality_config("text")
    proc = TextProcessor(cfg, tokenizer=tokenizer)
    enc = proc(texts or corpus(n, seed=seed))
    samples = [{"input_ids": i, "attention_mask": a} for i, a in zip(enc["input_ids"], enc["attention_mask"])]
    col = MaskCollator({"text": ("input_ids", TextModality.build_mask_sampler(cfg))}, seed=seed,
                       collate_fns={"text": TextModality.collate})
    return col(samples)


@pytest.mark.parametrize("stop_grad", [False, True])
def test_readout_loss_joins_the_latent_loss(tokenizer, stop_grad):
    model = tiny_model(readout_weight=0.5, readout_stop_grad=stop_grad)
    out = model(**text_batch(model, tokenizer))
    assert set(out.losses) == {"text", "text_mlm"} and "text/mlm_acc" in out.metrics
    torch.testing.assert_close(out.loss, out.losses["text"] + 0.5 * out.losses["text_mlm"])
    out.losses["text_mlm"].backward()
    assert model.text_readout.decoder.weight.grad.abs().sum() > 0
    pred_grad = model.predictor.predictor_proj.weight.grad
    if stop_grad:
        assert pred_grad is None or pred_grad.abs().sum() == 0
    else:
        assert pred_grad.abs().sum() > 0


def test_no_readout_without_the_option():
    model = tiny_model(readout=False)
    assert model.text_readout is None
    with pytest.raises(ValueError, match="readout"):
        model.fill_spans(torch.full((1, 4), 4))


def test_model_fill_spans_shapes(tokenizer):
    model = tiny_model().eval()
    ids = torch.randint(5, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(0))
    ids[0, 3:6] = 4
    ids[1, 10] = 4
    ids[2, [1, 7]] = 4
    out = model.fill_spans(ids, top_k=3)
    assert out["top_ids"].shape == (3, 3, 3) and out["top_probs"].shape == (3, 3, 3)
    assert out["valid"].sum(1).tolist() == [3, 1, 2]
    assert out["positions"][0].tolist() == [3, 4, 5]
    assert torch.all(out["top_probs"][..., :-1] >= out["top_probs"][..., 1:])
    with pytest.raises(ValueError, match="at least one masked"):
        model.fill_spans(torch.randint(5, VOCAB, (1, LENGTH)))


@pytest.mark.parametrize("text, n_tokens", [
    ("The king <mask> the crown.", [1]),
    ("The <mask><mask> speak.", [2]),
    ("Fair <mask> and noble <mask> come.", [1, 1]),
    ("<mask><mask><mask> lady, <mask>.", [3, 1]),
])
def test_fill_spans_text_returns_one_list_per_span(tokenizer, text, n_tokens):
    model = tiny_model().eval()
    (spans,) = fill_spans_text(model, tokenizer, [text], top_k=4)
    assert len(spans) == len(n_tokens)
    for completions, n in zip(spans, n_tokens):
        assert len(completions) == 4
        probs = [p for _, p in completions]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        for completion, _ in completions:  # n tokens decoded together
            assert len(tokenizer(completion, add_special_tokens=False)["input_ids"]) <= n + 1
    # the processor-level helper gives the same answer
    proc = TextProcessor(model.config.modality_config("text"), tokenizer=tokenizer)
    assert [[c for c, _ in s] for s in proc.fill_spans(model, [text], top_k=4)[0]] == [[c for c, _ in s] for s in spans]
    with pytest.raises(ValueError, match="no <mask>"):
        fill_spans_text(model, tokenizer, "no marker here")


def test_masked_token_accuracy_scores_a_perfect_and_a_constant_predictor():
    chunks = chunk_ids(torch.arange(200) % 17, 20)  # (10, 20)
    masks = span_masks(len(chunks), 20, SpanMasking(20, 0.25), seed=0)

    def perfect(ids, m):
        return torch.nn.functional.one_hot(ids[m], 17).float()

    def constant(ids, m):
        return torch.arange(17.0).expand(int(m.sum()), 17)  # always predicts 16, 15, 14, 13, 12

    assert masked_token_accuracy(perfect, chunks, masks, batch_size=3)["top1"] == 1.0
    res = masked_token_accuracy(constant, chunks, masks)
    labels = chunks[masks]
    assert res["top1"] == pytest.approx(float((labels == 16).float().mean()))
    assert res["top5"] == pytest.approx(float((labels >= 12).float().mean()))


def _eval_cli(model: MMJepaModel, tokenizer, folder, text) -> dict:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main_spans(["--model", str(folder), "--text", str(text), "--json", str(folder / "r.json")]) == 0
    return json.loads((folder / "r.json").read_text())


def test_eval_spans_cli_matches_the_direct_computation(tokenizer, tmp_path):
    model = tiny_model(mask_ratio=0.2).eval()
    text = tmp_path / "held_out.txt"
    text.write_text(" ".join(cycle_text(20, seed=99)), encoding="utf-8")
    res = _eval_cli(model, tokenizer, tmp_path / "model", text)
    chunks = chunk_ids(tokenizer(text.read_text(), add_special_tokens=False)["input_ids"], LENGTH)
    masks = span_masks(len(chunks), LENGTH, SpanMasking(LENGTH, 0.2), seed=0)
    direct = masked_token_accuracy(mmjepa_predictor(model), chunks, masks)
    assert res["num_masked"] == direct["num_masked"] == int(masks.sum())
    assert res["top1"] == pytest.approx(direct["top1"]) and res["top5"] == pytest.approx(direct["top5"])


@pytest.mark.slow
def test_a_few_steps_teach_the_readout_and_eval_spans_cli_reports_it(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(mask_ratio=0.2)
    text = tmp_path / "held_out.txt"
    text.write_text(" ".join(cycle_text(40, seed=99)), encoding="utf-8")
    before = _eval_cli(model, tokenizer, tmp_path / "before", text)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        out = model(**text_batch(model, tokenizer, seed=step, texts=cycle_text(8, seed=step)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_target(0.99)
        losses.append(float(out.losses["text_mlm"].detach()))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    after = _eval_cli(model, tokenizer, tmp_path / "after", text)
    for res in (before, after):
        assert 0.0 <= res["top1"] <= res["top5"] <= 1.0 and res["num_masked"] == before["num_masked"] > 0
    assert after["top5"] > before["top5"] + 0.03
