"""bench/quality.py helpers: probe pooling, the BERT baseline's size and inputs, the CLI."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import BertForMaskedLM

from mmjepa.bench import quality
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


@pytest.mark.parametrize("target", [300_000, 1_000_000])
def test_bert_baseline_has_the_closest_parameter_count(target):
    cfg = quality.bert_matching(target, vocab=500, hidden=64, heads=4, max_len=64)
    chosen = cfg.num_hidden_layers

    def gap(depth: int) -> int:
        cfg.num_hidden_layers = depth
        return abs(quality._trainable(BertForMaskedLM(cfg)) - target)

    assert gap(chosen) < gap(chosen - 1) and gap(chosen) < gap(chosen + 1)


def test_bert_inputs_mask_exactly_the_span_targets():
    ids = torch.arange(10, 22).reshape(2, 6)
    masks = {"text": {"target": torch.tensor([[[1, 2]], [[4, 0]]]),
                      "target_valid": torch.tensor([[[True, True]], [[True, False]]])}}
    batch = {"input_ids": ids, "input_ids_valid": torch.ones(2, 6, dtype=torch.bool), "masks": masks}
    inp, att, labels = quality._bert_inputs(batch, mask_id=3)
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
    m = [{"step": 50 * i, "loss": 7.0 - 0.1 * i, "elapsed_s": 10.0 * i} for i in range(1, 6)]
    b = [{"step": 50 * i, "loss": 7.0 - 0.05 * i, "elapsed_s": 12.0 * i} for i in range(1, 5)]
    path = quality._plot_curves(m, b, 6.1, tmp_path / "curves.png")
    img = Image.open(path)
    assert img.size == (720, 420) and len(set(img.convert("RGB").get_flattened_data())) > 3  # axes, text and three coloured lines
