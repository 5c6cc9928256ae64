"""Text modality: tokenizer training round trip, span-mask statistics, padding, collate, errors."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.masking import SpanMasking, geometric_p_for_mean
from mmjepa.modalities.text import TextConfig, TextModality, TextProcessor
from mmjepa.tokenizer import SPECIAL_TOKENS, train_tokenizer
from mmjepa_cli import main as cli_main

WORDS = ("the king queen lord lady love death night day sword crown blood heart speak hear "
         "good noble gentle sweet fair honour grace call come go stay fly weep").split()


def corpus(n_lines: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(n_lines)]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(corpus()) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tokenizer_cli_train_save_load_round_trip(corpus_file, tmp_path, model_type):
    out = tmp_path / model_type
    rc = cli_main(["tokenizer", "train", "--input", str(corpus_file), "--vocab-size", "80", "--model-type", model_type,
                         "--output", str(out)])
    assert rc == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert [tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token, tok.mask_token] == SPECIAL_TOKENS
    assert [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id] == [0, 1, 2, 3, 4]
    trained = train_tokenizer([corpus_file], 80, model_type)
    trained.save_pretrained(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    texts = corpus(20, seed=1) + ["Fair lady, <mask> the crown."]
    for t in texts:
        ids = trained(t)["input_ids"]
        assert loaded(t)["input_ids"] == ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    for t in (tok, loaded):
        ids = t("Fair lady, <mask> the crown.", add_special_tokens=False)["input_ids"]
        assert ids.count(t.mask_token_id) == 1
        assert t.decode(t(texts[0], add_special_tokens=False)["input_ids"]) == texts[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(model_type="wordpiece"), "model_type"),
    (dict(vocab_size=3), "vocab_size"),
])
def test_tokenizer_rejects_bad_options(corpus_file, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_tokenizer([corpus_file], **{"vocab_size": 80, **kwargs})


def test_tokenizer_cli_reports_missing_input(tmp_path, capsys):
    rc = cli_main(["tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "out")])
    assert rc == 2 and "not a file" in capsys.readouterr().err


def _runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool mask."""
    runs, n = [], 0
    for v in mask.tolist() + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


@pytest.mark.parametrize("ratio, mean_span", [(0.15, 3.0), (0.25, 3.0), (0.3, 2.0)])
def test_span_mask_ratio_and_mean_span_length(ratio, mean_span):
    s = SpanMasking(256, mask_ratio=ratio, mean_span=mean_span, max_span=10)
    g = torch.Generator().manual_seed(0)
    masked, total, runs = 0, 0, []
    for _ in range(300):
        m = s.sample(256, g)
        masked += int(m.sum())
        total += 256
        runs += _runs(m)
        assert max(_runs(m)) <= 10
    assert masked / total == pytest.approx(ratio, abs=0.005)
    # the last span of a sample is shortened to hit the ratio, so the realised mean is a bit lower
    assert sum(runs) / len(runs) == pytest.approx(mean_span, rel=0.1)


def test_geometric_p_gives_the_asked_mean():
    p = geometric_p_for_mean(3.0, 10)
    k = torch.arange(1, 11, dtype=torch.float64)
    w = p * (1 - p) ** (k - 1)
    assert float((w * k).sum() / w.sum()) == pytest.approx(3.0, abs=1e-6)
    with pytest.raises(ValueError, match="mean_span"):
        geometric_p_for_mean(8.0, 10)


def test_span_masking_respects_padding_and_packs_variable_lengths():
    s = SpanMasking(32, mask_ratio=0.25)
    valid = torch.zeros(3, 32, dtype=torch.bool)
    for b, n in enumerate([32, 20, 9]):
        valid[b, :n] = True
    ms = s(3, torch.Generator().manual_seed(0), valid=valid)
    assert ms["target"].shape[:2] == (3, 1) and "target_valid" in ms and "context_valid" in ms
    for b, n in enumerate([32, 20, 9]):
        ctx = ms["context"][b][ms["context_valid"][b]]
        tgt = ms["target"][b, 0][ms["target_valid"][b, 0]]
        assert len(tgt) == round(0.25 * n)
        assert sorted(ctx.tolist() + tgt.tolist()) == list(range(n))


def test_text_collate_pads_and_marks_real_tokens():
    cfg = TextConfig(vocab_size=80, max_length=4)
    out = TextModality.collate([{"input_ids": [5, 6, 7]}, {"input_ids": torch.tensor([8, 9])}], cfg)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert out["input_ids_valid"].tolist() == [[True, True, True, False], [True, True, False, False]]
    with pytest.raises(ValueError, match="more than max_length"):
        TextModality.collate([{"input_ids": list(range(5))}], cfg)


def tiny_text_model(**text) -> MMJepaModel:
    cfg = MMJepaConfig(modalities={"text": {"vocab_size": 80, "max_length": 16, **text}}, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, predictor_hidden_size=16,
                       predictor_num_hidden_layers=1, predictor_num_attention_heads=2)
    return MMJepaModel(cfg).eval()


@pytest.mark.parametrize("position_embedding", ["sincos", "rope"])
def test_padding_changes_nothing_for_real_tokens(position_embedding):
    model = tiny_text_model()
    if position_embedding == "rope":
        model = MMJepaModel(MMJepaConfig(**{**model.config.to_dict(), "position_embedding": "rope"})).eval()
    ids = torch.randint(5, 80, (1, 10), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)  # (1, 16)
    valid = torch.arange(16)[None] < 10
    h_pad = model.encode(input_ids=padded, attention_mask=valid.long())["text"][0, :10]
    h_junk = model.encode(input_ids=padded.masked_fill(~valid, 42), attention_mask=valid.long())["text"][0, :10]
    other = torch.randint(5, 80, (1, 16), generator=torch.Generator().manual_seed(1))
    h_batch = model.encode(input_ids=torch.cat([padded, other]),
                           attention_mask=torch.cat([valid, torch.ones(1, 16, dtype=torch.bool)]).long())["text"][0, :10]
    torch.testing.assert_close(h_junk, h_pad)
    torch.testing.assert_close(h_batch, h_pad, atol=1e-5, rtol=1e-5)
    if position_embedding == "sincos":  # unpadded input (L=10 < max_length) through the same model
        h_unpadded = model.encode(input_ids=ids)["text"][0]
        torch.testing.assert_close(h_unpadded, h_pad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ids, match", [
    (torch.tensor([[1, 2, 80]]), "token ids must lie"),
    (torch.tensor([[-1, 2, 3]]), "token ids must lie"),
    (torch.zeros(1, 17, dtype=torch.long), "L <= 16"),
    (torch.zeros(1, 4), "integer token ids"),
])
def test_bad_token_ids_get_clear_errors(ids, match):
    with pytest.raises(ValueError, match=match):
        tiny_text_model().encode(input_ids=ids)


def test_text_processor(corpus_file):
    tok = train_tokenizer([corpus_file], 80)
    proc = TextProcessor(TextConfig(vocab_size=80, max_length=16), tokenizer=tok)
    out = proc(["The king.", "Fair lady " * 20])
    assert out["input_ids"].shape == (2, 16) and out["attention_mask"].shape == (2, 16)
    assert out["attention_mask"][1].all() and not out["attention_mask"][0].all()
    with pytest.raises(ValueError, match="empty"):
        proc("   ")
    with pytest.raises(ValueError, match="no tokenizer"):
        TextProcessor(TextConfig())("hello")
    with pytest.raises(ValueError, match="vocab_size"):
        TextProcessor(TextConfig(vocab_size=40), tokenizer=tok)


@pytest.mark.parametrize("opts, match", [
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(mean_span=6.0, max_span=10), "mean_span"),
    (dict(mask_token_id=90, vocab_size=80), "mask_token_id"),
    (dict(mask="random"), "mask"),
])
def test_bad_text_options(opts, match):
    with pytest.raises(ValueError, match=match):
        TextConfig(**opts)
