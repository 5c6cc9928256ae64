"""Audio modality: Kaldi fbank features, resampling + mono mixdown, padding masks, samplers, errors."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from torchaudio.compliance import kaldi
from torchaudio.functional import resample

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.collate import MaskCollator
from mmjepa.modalities.audio import (AudioConfig, AudioProcessor, TimeFrequencyBlocks,
                                     ValidMultiBlock, compute_normalization_stats)

SR = 16000


def tone(seconds: float, sr: int = SR, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * math.pi * freq * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def small_cfg(**kw) -> AudioConfig:
    """32 mel bins, 64 frames, 16x16 patches: a 2x4 token grid."""
    return AudioConfig(**{"num_mel_bins": 32, "max_frames": 64, **kw})


def tiny_model(**audio) -> MMJepaModel:
    cfg = MMJepaConfig(modalities={"audio": {"num_mel_bins": 32, "max_frames": 64, **audio}}, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, predictor_hidden_size=16,
                       predictor_num_hidden_layers=1, predictor_num_attention_heads=2)
    return MMJepaModel(cfg).eval()


def test_fbank_matches_kaldi_called_directly():
    wav = tone(0.5)
    proc = AudioProcessor(AudioConfig())
    ref = kaldi.fbank(torch.from_numpy(wav)[None], htk_compat=True, sample_frequency=SR, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_length=25.0, frame_shift=10.0)
    ours = proc.log_mel(wav, SR)
    assert ours.shape == (1 + (len(wav) - 400) // 160, 128)
    torch.testing.assert_close(ours, ref)
    feats, valid = proc.preprocess(wav, SR)  # normalised, padded to max_frames
    torch.testing.assert_close(feats[:, : ref.shape[0]], ((ref - proc.cfg.mean) / proc.cfg.std).T)
    assert feats[:, ref.shape[0]:].abs().max() == 0


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
def test_resampling_to_16k(sr):
    wav = tone(0.5, sr)
    proc = AudioProcessor(small_cfg())
    out = proc.waveform(wav, sr)
    assert abs(len(out) - len(wav) * SR / sr) <= 1
    torch.testing.assert_close(out, resample(torch.from_numpy(wav), sr, SR))


def test_stereo_is_mixed_to_mono_for_arrays_tensors_and_files(tmp_path):
    left, right = tone(0.4, freq=300.0), tone(0.4, freq=900.0, seed=1)
    proc = AudioProcessor(small_cfg())
    mono = proc.log_mel((left + right) / 2, SR)
    stereo = np.stack([left, right], 1)  # (n, 2)
    torch.testing.assert_close(proc.log_mel(stereo, SR), mono)
    torch.testing.assert_close(proc.log_mel(torch.from_numpy(stereo.T.copy()), SR), mono)  # (2, n)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SR, subtype="FLOAT")
    torch.testing.assert_close(proc.log_mel(str(path)), mono)
    torch.testing.assert_close(proc.log_mel(path.read_bytes()), mono)
    torch.testing.assert_close(proc.log_mel({"array": stereo, "sampling_rate": SR}), mono)


def _corrupt_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(0.3), SR, format="WAV")
    return b"RIFF\x00\x00" + buf.getvalue()[6:40]  # a truncated, broken header


@pytest.mark.parametrize("audio, sr, match", [
    (np.zeros(SR, np.float32), SR, "silent"),
    (tone(0.05), SR, "too short"),
    (np.array([0.1, np.nan] * 4000, np.float32), SR, "NaN or infinite"),
    (np.array([0.1, np.inf] * 4000, np.float32), SR, "NaN or infinite"),
    (np.zeros(0, np.float32), SR, "empty"),
    (tone(0.5), None, "sampling_rate is required"),
    (_corrupt_wav(), None, "could not decode"),
    (b"not audio at all", None, "could not decode"),
    ("/nonexistent/clip.wav", None, "not found"),
    (np.array(["a", "b"]), SR, "real numbers"),
    (np.zeros((2, 2, 2), np.float32) + 0.5, SR, "shape"),
])
def test_bad_audio_gets_a_clear_value_error(audio, sr, match):
    with pytest.raises(ValueError, match=match):
        AudioProcessor(small_cfg())(audio, sampling_rate=sr)


def test_normalisation_stats_standardise_the_features():
    clips = [tone(0.3, freq=f, seed=i) for i, f in enumerate((200.0, 500.0, 1200.0))]
    cfg = small_cfg()
    mean, std = compute_normalization_stats(clips, cfg, sampling_rate=SR)
    raw = torch.cat([AudioProcessor(cfg).log_mel(c, SR) for c in clips]).double()
    assert mean == pytest.approx(float(raw.mean()), rel=1e-6)
    assert std == pytest.approx(float(raw.std(unbiased=False)), rel=1e-6)
    norm = AudioProcessor(small_cfg(mean=mean, std=std, max_frames=256))
    feats = torch.cat([norm.log_mel(c, SR) for c in clips])
    z = (feats - norm.cfg.mean) / norm.cfg.std
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3


def test_validity_mask_marks_the_time_patches_with_real_frames():
    proc = AudioProcessor(small_cfg())
    out = proc([tone(0.2), tone(1.0)], sampling_rate=SR)  # 18 frames -> 2 time patches; 98 -> cropped to 64
    assert out["input_features"].shape == (2, 32, 64)
    valid = out["input_features_valid"].reshape(2, 2, 4)  # (B, Fg, Tg)
    assert valid[0].tolist() == [[True, True, False, False]] * 2
    assert valid[1].all()
    assert "input_features_valid" not in AudioProcessor(small_cfg(padding="zeros"))(tone(0.2), sampling_rate=SR)


def test_padding_changes_nothing_for_real_tokens():
    model = tiny_model()
    proc = AudioProcessor(small_cfg())
    short = proc(tone(0.3), sampling_rate=SR)  # 28 frames -> 2 of 4 time patches real
    x, valid = short["input_features"], short["input_features_valid"]
    h = model.encode(input_features=x, input_features_valid=valid)["audio"]  # (1, N, D)
    # 1. garbage in the padded frames changes nothing
    junk = x.clone()
    junk[..., 32:] = torch.randn_like(junk[..., 32:]) * 5
    h_junk = model.encode(input_features=junk, input_features_valid=valid)["audio"]
    torch.testing.assert_close(h_junk[valid], h[valid])
    # 2. batched with a longer clip: same outputs for the short clip's real tokens
    batch = proc([tone(0.3), tone(0.9, freq=700.0)], sampling_rate=SR)
    h_batch = model.encode(**batch)["audio"]
    torch.testing.assert_close(h_batch[0][valid[0]], h[0][valid[0]], atol=1e-5, rtol=1e-5)
    # 3. an unpadded model (grid of exactly 2 time patches) with the same weights gives the same tokens
    unpadded = MMJepaModel(MMJepaConfig(**{**model.config.to_dict(),
                                           "modalities": {"audio": {"num_mel_bins": 32, "max_frames": 32}}})).eval()
    state = {k: v for k, v in model.state_dict().items() if "pos_embed" not in k}
    unpadded.load_state_dict(state, strict=False)
    h_unpadded = unpadded.encode(input_features=x[..., :32])["audio"]  # (1, 4, D): all tokens real
    torch.testing.assert_close(h_unpadded[0], h[0][valid[0]], atol=1e-5, rtol=1e-5)
    # pooled embeddings ignore padding too
    e = model.embed(input_features=junk, input_features_valid=valid)["audio"]
    torch.testing.assert_close(e, model.embed(input_features=x, input_features_valid=valid)["audio"])


def _valid_for(lengths: list[int], grid: tuple[int, int]) -> torch.Tensor:
    Fg, Tg = grid
    return torch.stack([(torch.arange(Tg) < t).repeat(Fg) for t in lengths])  # (B, N)


@pytest.mark.parametrize("sampler", [
    TimeFrequencyBlocks((8, 12)),
    ValidMultiBlock((8, 12), min_keep=2),
])
def test_audio_samplers_only_pick_real_tokens(sampler):
    g = torch.Generator().manual_seed(0)
    lengths = [12, 7, 3, 1, 2]
    valid = _valid_for(lengths, (8, 12))
    for _ in range(20):
        ms = sampler(len(lengths), g, valid=valid)
        B, M, Kt = ms["target"].shape
        cv = ms.get("context_valid", torch.ones_like(ms["context"], dtype=torch.bool))
        tv = ms.get("target_valid", torch.ones_like(ms["target"], dtype=torch.bool))
        for b in range(B):
            ctx = set(ms["context"][b][cv[b]].tolist())
            tgt = set(ms["target"][b][tv[b]].tolist())
            real = set(valid[b].nonzero().squeeze(1).tolist())
            assert ctx and tgt, "every sample needs context and targets"
            assert ctx <= real and tgt <= real
            assert not ctx & tgt, "context and targets overlap"


def test_time_frequency_blocks_span_whole_axes():
    g = torch.Generator().manual_seed(1)
    s = TimeFrequencyBlocks((8, 12), num_time_targets=2, num_freq_targets=2)
    ms = s(4, g)
    tv = ms.get("target_valid", torch.ones_like(ms["target"], dtype=torch.bool))
    for b in range(4):
        for m in range(4):
            idx = ms["target"][b, m][tv[b, m]]
            f, t = idx // 12, idx % 12
            if m < 2:  # time block: all 8 frequency rows of a run of time columns
                assert set(f.tolist()) == set(range(8)) and t.unique().numel() * 8 == idx.numel()
            else:  # frequency block: all 12 time columns of a run of rows
                assert set(t.tolist()) == set(range(12)) and f.unique().numel() * 12 == idx.numel()


@pytest.mark.parametrize("mask", ["tf_blocks", "multiblock"])
def test_audio_trains_through_the_core(mask):
    model = tiny_model(mask=mask, min_keep=1).train()
    cfg = model.config.modality_config("audio")
    proc = AudioProcessor(cfg)
    samples = []
    for i, secs in enumerate([0.3, 0.5, 0.7, 0.25]):
        f, v = proc.preprocess(tone(secs, freq=200.0 * (i + 1), seed=i), SR)
        samples.append({"input_features": f, "input_features_valid": v})
    col = MaskCollator.from_config(model.config, seed=0)
    out = model(**col(samples))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoders["audio"].embed.proj.weight.grad.abs().sum() > 0


def test_stats_command_runs_without_a_runtime_warning(tmp_path):
    """``python -m mmjepa.modalities.audio_stats stats`` (a module that ``import mmjepa`` does not
    import, so it is not already imported when it runs as __main__)."""
    sf.write(tmp_path / "a.wav", tone(0.5), SR)
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "mmjepa.modalities.audio_stats", "stats",
                        str(tmp_path / "a.wav"), "--num-mel-bins", "32"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RuntimeWarning" not in r.stderr and '"mean"' in r.stdout
