"""bench/quality.py and bench/shakespeare.py helpers: probe pooling, the baselines' sizes, inputs and
schedules, the summary over seeds, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import BertForMaskedLM, ModernBertForMaskedLM

from mmjepa.bench import quality, shakespeare
from mmjepa.modalities.audio import AudioProcessor
from mmjepa_cli import main as cli_main

from test_audio import tiny_model, tone, SR


def test_frequency_row_pooling_averages_real_time_patches_per_row():
    model = tiny_model()  # 32 mel bins, 64 frames, 16x16 patches: a (2, 4) grid
    acfg = model.config.modality_config("audio")
    out = AudioProcessor(acfg)([tone(0.2), tone(1.0, freq=880.0)], sampling_rate=SR)
    feats, valid = out["input_features"], out["input_features_valid"]
    pooled = quality._embed(model, feats, valid)
    assert pooled["freq_rows"].shape == (2, 2 * 32) and pooled["mean"].shape == (2, 32)
    h = model.encode(input_features=feats, input_features_valid=valid)["audio"].unflatten(1, (2, 4))  # (B, F, T, D)
    # clip 0 has 2 real time patches, clip 1 all 4
    assert torch.allclose(torch.from_numpy(pooled["freq_rows"][0]), h[0, :, :2].mean(1).flatten(), atol=1e-5)
    assert torch.allclose(torch.from_numpy(pooled["freq_rows"][1]), h[1].mean(1).flatten(), atol=1e-5)
    assert torch.allclose(torch.from_numpy(pooled["mean"][0]), h[0, :, :2].mean((0, 1)), atol=1e-5)


def test_logmel_baseline_pools_only_real_frames():
    model = tiny_model()
    acfg = model.config.modality_config("audio")
    out = AudioProcessor(acfg)([tone(0.2)], sampling_rate=SR)
    feats, valid = out["input_features"], out["input_features_valid"]
    pooled = quality._logmel_pool(feats, valid, acfg.grid, acfg.patch[1])
    assert pooled.shape == (1, 32)
    assert torch.allclose(torch.from_numpy(pooled[0]), feats[0, :, :32].mean(-1), atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "modernbert"])
@pytest.mark.parametrize("target", [300_000, 1_000_000])
def test_baselines_have_the_closest_parameter_count(target, name):
    cfg = shakespeare.MATCHING[name](target, vocab=500, hidden=64, heads=4, max_len=64)
    chosen = cfg.num_hidden_layers
    model_class = shakespeare.MODEL_CLASSES[name]

    def gap(depth: int) -> int:
        cfg.num_hidden_layers = depth
        if name == "modernbert":
            cfg.layer_types = ["full_attention"] * depth
        return abs(shakespeare.trainable(model_class(cfg)) - target)

    assert gap(chosen) < gap(chosen - 1) and gap(chosen) < gap(chosen + 1)


def test_modernbert_baseline_is_the_modern_recipe():
    cfg = shakespeare.modernbert_matching(1_750_000, vocab=2000, hidden=128, heads=4, max_len=128)
    model = ModernBertForMaskedLM(cfg)
    assert cfg.num_hidden_layers == 9 and cfg.intermediate_size == 256  # the GLU's Wi is 128 -> 2 x 256
    assert set(cfg.layer_types) == {"full_attention"}  # global attention in every layer
    assert cfg.attention_dropout == cfg.mlp_dropout == cfg.embedding_dropout == 0.0
    assert model.decoder.weight.data_ptr() == model.model.embeddings.tok_embeddings.weight.data_ptr()  # tied


@pytest.mark.parametrize("name", ["bert", "modernbert"])
def test_sparse_masked_lm_loss_equals_the_models_own(name):
    torch.manual_seed(0)
    cfg = shakespeare.MATCHING[name](200_000, vocab=300, hidden=32, heads=2, max_len=16)
    model = shakespeare.MODEL_CLASSES[name](cfg).eval()
    ids = torch.randint(5, 300, (3, 16))
    att = torch.ones_like(ids)
    att[2, 12:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 3:6] = ids[:, 3:6]
    inputs = ids.masked_fill(labels != -100, 4)
    ref = model(input_ids=inputs, attention_mask=att, labels=labels).loss
    assert torch.allclose(shakespeare.masked_lm_loss(model, inputs, att, labels), ref, atol=1e-5)


def test_baseline_schedule_warms_up_then_decays_to_zero():
    s = shakespeare.Schedule(lr=1e-3, warmup=0.1)
    lrs = [s.lr_at(step, 100) for step in range(101)]
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(1e-3) and lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b for a, b in zip(lrs[:11], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_summary_over_seeds_gives_mean_spread_and_the_per_seed_verdict():
    seeds = [{"seed": 0, "mmjepa": {"top1": 0.10, "top5": 0.20, "train_s": 10.0, "steps": 5},
              "modernbert": {"top1": 0.08, "top5": 0.21, "train_s": 10.0, "steps": 3}},
             {"seed": 1, "mmjepa": {"top1": 0.12, "top5": 0.24, "train_s": 12.0, "steps": 5},
              "modernbert": {"top1": 0.09, "top5": 0.22, "train_s": 12.0, "steps": 3}}]
    out = shakespeare.summarize(seeds, ["mmjepa", "modernbert"])
    assert out["mmjepa_top1"] == pytest.approx(0.11) and out["mmjepa_top1_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert out["modernbert_top5_per_seed"] == [0.21, 0.22]
    assert out["mmjepa_beats_modernbert_every_seed"] is False  # seed 0 loses on top-5
    seeds[0]["mmjepa"]["top5"] = 0.25
    assert shakespeare.summarize(seeds, ["mmjepa", "modernbert"])["mmjepa_beats_modernbert_every_seed"] is True


def test_baseline_pairs_are_checked():
    assert shakespeare.parse_pairs(["bert=3e-4", "modernbert=1e-3"], "--baseline-lr") == {"bert": 3e-4, "modernbert": 1e-3}
    with pytest.raises(ValueError, match="NAME=VALUE with NAME one of modernbert, bert"):
        shakespeare.parse_pairs(["roberta=1e-3"], "--baseline-lr")


def test_mlm_inputs_mask_exactly_the_span_targets():
    ids = torch.arange(10, 22).reshape(2, 6)
    masks = {"text": {"target": torch.tensor([[[1, 2]], [[4, 0]]]),
                      "target_valid": torch.tensor([[[True, True]], [[True, False]]])}}
    batch = {"input_ids": ids, "input_ids_valid": torch.ones(2, 6, dtype=torch.bool), "masks": masks}
    inp, att, labels = shakespeare.mlm_inputs(batch, mask_id=3)
    assert inp.tolist() == [[10, 3, 3, 13, 14, 15], [16, 17, 18, 19, 3, 21]]
    assert labels.tolist() == [[-100, 11, 12, -100, -100, -100], [-100, -100, -100, -100, 20, -100]]
    assert att.tolist() == [[1] * 6] * 2


def test_cli_takes_overrides_before_or_after_options(monkeypatch, tmp_path):
    seen = {}

    def fake_bench(args):
        seen.update(vars(args))
        return {"benchmark": "fsdd"}

    monkeypatch.setitem(quality.BENCHES, "fsdd", fake_bench)
    out = tmp_path / "r.json"
    argv = ["bench", "quality", "fsdd", "--steps", "3", "model.objectives.sigreg.weight=0.1", "--json", str(out),
            "train.seed=1"]
    assert cli_main(argv) == 0
    assert seen["overrides"] == ["model.objectives.sigreg.weight=0.1", "train.seed=1"] and seen["steps"] == 3
    assert '"command": "mmjepa bench quality fsdd' in out.read_text()


def test_learning_curves_plot(tmp_path):
    curve = lambda slope, dt, n: [{"step": 50 * i, "loss": 7.0 - slope * i, "elapsed_s": dt * i}  # noqa: E731
                                  for i in range(1, n)]
    seeds = [{"seed": s, "mmjepa": {"curve": curve(0.1, 10.0, 6)}, "modernbert": {"curve": curve(0.05, 12.0, 5)}}
             for s in (0, 1)]
    path = shakespeare.plot_curves(seeds, ["mmjepa", "modernbert"], 6.1, tmp_path / "curves.png")
    img = Image.open(path)
    assert img.size == (800, 480) and len(set(img.convert("RGB").get_flattened_data())) > 5  # axes, text, five lines


def test_merge_combines_runs_made_apart(tmp_path):
    def run(seed: int, top1: float, split: str = "test") -> str:
        curve = [{"step": 50, "loss": 6.0, "elapsed_s": 5.0}, {"step": 100, "loss": 5.5, "elapsed_s": 10.0}]
        per_seed = [{"seed": seed, "mmjepa": {"top1": top1, "top5": 0.2, "train_s": 10.0, "steps": 100, "curve": curve},
                     "bert": {"top1": 0.05, "top5": 0.15, "train_s": 10.0, "steps": 80, "curve": curve}}]
        path = tmp_path / f"s{seed}_{split}.json"
        path.write_text(json.dumps({"benchmark": "shakespeare", "eval_split": split, "models": ["mmjepa", "bert"],
                                    "unigram_top1": 0.04, "unigram_top5": 0.14, "held_out_chunks": 10,
                                    "held_out_masked_tokens": 320, "unigram_entropy": 6.2, "per_seed": per_seed,
                                    "command": f"run {seed}"}))
        return str(path)

    out = shakespeare.merge([run(0, 0.08), run(1, 0.10)], tmp_path / "merged")
    assert out["seeds"] == [0, 1] and out["mmjepa_top1"] == pytest.approx(0.09)
    assert out["mmjepa_beats_bert_every_seed"] is True and Path(out["plot"]).exists()
    assert out["merged_from"] == ["run 0", "run 1"]
    with pytest.raises(ValueError, match="differ"):
        shakespeare.merge([run(0, 0.08), run(1, 0.1, split="validation")], tmp_path / "merged")


def test_sweep_pick_prefers_top1_above_unigram_else_the_lowest_training_loss():
    def row(model, lr, warmup, top1, loss, top5=0.2):
        return {"model": model, "lr": lr, "warmup": warmup, "top1": top1, "top5": top5, "final_train_loss": loss}

    rows = [row("modernbert", 1e-3, 0.05, 0.09, 5.6), row("modernbert", 1e-3, 0.05, 0.07, 5.8),  # mean 0.08
            row("modernbert", 5e-4, 0.1, 0.085, 5.5), row("modernbert", 5e-4, 0.1, 0.085, 5.5),
            row("modernbert", 3e-3, 0.1, 0.04, 6.1), row("modernbert", 3e-3, 0.1, 0.04, 6.1),
            # BERT: no setting beats unigram (0.04); the degenerate lr ties unigram exactly
            row("bert", 3e-3, 0.05, 0.04, 6.21), row("bert", 3e-4, 0.1, 0.035, 6.16), row("bert", 1e-4, 0.1, 0.036, 6.20)]
    best = shakespeare.pick_best(rows, unigram_top1=0.04)
    assert (best["modernbert"]["lr"], best["modernbert"]["warmup"]) == (5e-4, 0.1)
    assert best["modernbert"]["top1"] == pytest.approx(0.085) and best["modernbert"]["runs"] == 2
    assert (best["bert"]["lr"], best["bert"]["warmup"]) == (3e-4, 0.1) and "lowest mean training loss" in best["bert"]["rule"]
