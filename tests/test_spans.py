"""Masked-span prediction: the readout loss, fill_spans, the text helper and `mmjepa eval spans`."""

from __future__ import annotations

import json

import pytest
import torch

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.collate import MaskCollator
from mmjepa.masking import SpanMasking
from mmjepa.modalities.text import TextProcessor
from mmjepa.eval.spans import (_completions, chunk_ids, fill_spans, fill_spans_text, masked_token_accuracy,
                                mmjepa_predictor, span_masks)
from mmjepa.modalities.text import vocab_fingerprint
from mmjepa.tokenizer import train_tokenizer
from mmjepa_cli import main as cli_main

from test_text import WORDS, corpus

VOCAB, LENGTH = 80, 24


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(texts=corpus(), vocab_size=VOCAB)


def tiny_model(objectives: dict | None = None, **text) -> MMJepaModel:
    cfg = MMJepaConfig(modalities={"text": {"vocab_size": VOCAB, "max_length": LENGTH, **text}}, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, predictor_hidden_size=16,
                       predictor_num_hidden_layers=1, predictor_num_attention_heads=2, objectives=objectives)
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
    col = MaskCollator.from_config(model.config, seed=seed)
    return col(samples)


@pytest.mark.parametrize("stop_grad", [False, True])
def test_readout_loss_joins_the_latent_loss(tokenizer, stop_grad):
    model = tiny_model({"intra": {}, "readout": {"modality": "text", "weight": 0.5, "stop_grad": stop_grad}})
    out = model(**text_batch(model, tokenizer))
    assert set(out.losses) == {"intra/text", "readout/text"} and "text/readout_acc" in out.metrics
    torch.testing.assert_close(out.loss, out.losses["intra/text"] + 0.5 * out.losses["readout/text"])
    out.losses["readout/text"].backward()
    assert model.objectives["readout"].head.decoder.weight.grad.abs().sum() > 0
    pred_grad = model.predictor.predictor_proj.weight.grad
    if stop_grad:
        assert pred_grad is None or pred_grad.abs().sum() == 0
    else:
        assert pred_grad.abs().sum() > 0


@pytest.mark.parametrize("stop_grad", [False, True])
def test_a_tied_readout_reads_through_the_token_table(tokenizer, tmp_path, stop_grad):
    """tie_embeddings: no output weight of its own (V x D fewer parameters), the logits are the
    head's hidden state against the context encoder's token table, which the cross-entropy trains
    (unless stop_grad); the model saves, loads and fills spans the same."""
    untied = tiny_model()
    model = tiny_model({"intra": {}, "readout": {"modality": "text", "tie_embeddings": True, "stop_grad": stop_grad}})
    head, table = model.objectives["readout"].head, model.token_embeddings("text")
    assert table is model.encoders["text"].embed.tok.weight and head.decoder is None
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(model) == VOCAB * 32  # the untied output weight; the bias stays
    batch = text_batch(model, tokenizer)
    out = model(**batch)
    out.losses["readout/text"].backward()
    assert head.decoder_bias.grad.abs().sum() > 0
    table_grad = table.grad.abs().sum() if table.grad is not None else 0
    assert (table_grad == 0) if stop_grad else (table_grad > 0)
    h = torch.randn(3, 32)
    torch.testing.assert_close(model.objectives["readout"].logits(h, table),
                               head.norm(torch.nn.functional.gelu(head.dense(h))) @ table.T + head.decoder_bias)
    with pytest.raises(ValueError, match="tied to the token embeddings"):
        model.objectives["readout"].logits(h)
    model.eval().save_pretrained(tmp_path / "tied")
    loaded = MMJepaModel.from_pretrained(tmp_path / "tied").eval()
    ids = torch.randint(5, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    ids[:, 4:7] = 4
    torch.testing.assert_close(fill_spans(model, ids)["logits"], fill_spans(loaded, ids)["logits"])


def test_a_text_model_gets_a_readout_by_default_and_none_without_it():
    assert list(tiny_model().objectives) == ["intra", "readout"]
    model = tiny_model({"intra": {}})
    with pytest.raises(ValueError, match="no readout objective"):
        fill_spans(model, torch.full((1, 4), 4))


def test_model_fill_spans_shapes(tokenizer):
    model = tiny_model().eval()
    ids = torch.randint(5, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(0))
    ids[0, 3:6] = 4
    ids[1, 10] = 4
    ids[2, [1, 7]] = 4
    out = fill_spans(model, ids, top_k=3)
    assert out["top_ids"].shape == (3, 3, 3) and out["top_probs"].shape == (3, 3, 3)
    assert out["valid"].sum(1).tolist() == [3, 1, 2]
    assert out["positions"][0].tolist() == [3, 4, 5]
    assert torch.all(out["top_probs"][..., :-1] >= out["top_probs"][..., 1:])
    with pytest.raises(ValueError, match="at least one masked"):
        fill_spans(model, torch.randint(5, VOCAB, (1, LENGTH)))


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
        texts = [c for c, _ in completions]
        assert all(texts) and len(set(texts)) == 4  # never empty, always distinct
        probs = [p for _, p in completions]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        for completion, _ in completions:  # n tokens decoded together
            assert len(tokenizer(completion, add_special_tokens=False)["input_ids"]) <= n + 1
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
    assert cli_main(["eval", "spans", "--model", str(folder), "--text", str(text), "--json", str(folder / "r.json")]) == 0
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
        losses.append(float(out.losses["readout/text"].detach()))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    after = _eval_cli(model, tokenizer, tmp_path / "after", text)
    for res in (before, after):
        assert 0.0 <= res["top1"] <= res["top5"] <= 1.0 and res["num_masked"] == before["num_masked"] > 0
    assert after["top5"] > before["top5"] + 0.03


def test_a_tokenizer_of_another_vocabulary_is_refused(tokenizer, tmp_path):
    """The model records its tokenizer's vocabulary: span filling refuses another one, whose ids
    would mean other words (here: a tokenizer trained on other text, of the same size)."""
    other = train_tokenizer(texts=cycle_text(200, seed=5), vocab_size=VOCAB)
    assert vocab_fingerprint(other) != vocab_fingerprint(tokenizer)
    model = tiny_model(vocab_fingerprint=vocab_fingerprint(tokenizer)).eval()
    assert fill_spans_text(model, tokenizer, "The king <mask> the crown.")  # the right one works
    with pytest.raises(ValueError, match="not the one the model was trained with"):
        fill_spans_text(model, other, "The king <mask> the crown.")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(cycle_text(10)), encoding="utf-8")
    model.save_pretrained(tmp_path / "m")
    other.save_pretrained(tmp_path / "m")
    assert cli_main(["eval", "spans", "--model", str(tmp_path / "m"), "--text", str(text)]) == 2


def test_completions_skip_empty_strings_and_merge_duplicates(tokenizer):
    """A span whose best tokens decode to nothing (a bare word boundary, a special token) or to
    the same string never yields an empty or a repeated completion."""
    blank = tokenizer.convert_tokens_to_ids("\u2581")  # the bare word-boundary piece
    word = tokenizer("king", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tokenizer.pad_token_id, blank, *word[:1], 5, 6]])
    probs = torch.tensor([[0.4, 0.3, 0.1, 0.1, 0.1]])
    out = _completions(probs, ids, tokenizer, 3)
    texts = [t for t, _ in out]
    assert "" not in texts and len(set(texts)) == len(texts)
    assert texts[0] == tokenizer.decode(word[:1]).strip()
