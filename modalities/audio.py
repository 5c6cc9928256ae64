"""Audio modality: decode (soundfile), resample to 16 kHz, mono, Kaldi log-mel filterbank (128 bins,
25 ms window, 10 ms shift, the AST/AudioMAE settings), normalise, crop/pad to a fixed number of
frames with a padding mask, patchify (frequency x time) and mask (time-frequency blocks or
multi-block).

Features have shape (F, T) = (num_mel_bins, max_frames); patches of ``patch_size`` = (pf, pt) make a
(F/pf, T/pt) token grid in frequency-major order (token id = f * (T/pt) + t). With
``padding="mask"`` the tokens of padded frames are marked invalid (``input_features_valid``), the
encoders' attention ignores them and the mask samplers never pick them.
"""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import soundfile as sf
import torch
from torchaudio.compliance import kaldi
from torchaudio.functional import resample
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

from mmjepa.layers import masked_mean
from mmjepa.masking import CORNERS, MultiBlock2D, pack_indices

from .base import GridPatchEmbed, Modality, options_of, pair, register_modality

AST_MEAN, AST_STD = -4.2677393, 4.5689974  # AudioSet log-mel statistics used by AST


@dataclass
class AudioConfig:
    """Options of the audio modality (stored under ``config.modalities["audio"]``).

    ``max_freq_hz`` caps the mel filters (e.g. 4000 for 8 kHz recordings, whose upper half is
    empty). ``mean`` / ``std`` normalise the log-mel features; compute them for a dataset with
    :func:`compute_normalization_stats` (or ``python -m mmjepa.modalities.audio_stats stats FILE...``).
    ``padding``: ``"mask"`` marks the tokens of padded frames invalid, ``"zeros"`` treats the
    zero padding as signal (every token valid). ``mask``: ``"tf_blocks"`` (A-JEPA-style blocks that
    span all frequencies over a time range, or all time over a frequency range) or ``"multiblock"``
    (I-JEPA blocks on the (F, T) grid). ``mask_corners`` (multiblock only): ``"reference"`` draws a
    block's corner as I-JEPA does, never reaching the last frequency row and time column of the
    clip; ``"full"`` lets blocks reach every patch (the tf_blocks placement always covers them all).
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    max_freq_hz: float = 0.0  # highest mel frequency; 0: the Nyquist frequency (8 kHz at 16 kHz)
    max_frames: int = 1024
    patch_size: Any = 16  # an int, or (frequency, time)
    padding: str = "mask"
    mean: float = AST_MEAN
    std: float = AST_STD
    silence_threshold: float = 1e-4  # peak |amplitude| below this is silence
    mask: str = "tf_blocks"
    num_time_targets: int = 2
    num_freq_targets: int = 2
    time_scale: tuple[float, float] = (0.1, 0.25)
    freq_scale: tuple[float, float] = (0.1, 0.25)
    num_targets: int = 4  # multiblock
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 4
    mask_corners: str = "reference"  # multiblock: "reference" (I-JEPA's corner draw) or "full"

    def __post_init__(self):
        pf, pt = pair(self.patch_size)
        if pf <= 0 or pt <= 0 or self.num_mel_bins % pf or self.max_frames % pt:
            raise ValueError(f"num_mel_bins ({self.num_mel_bins}) and max_frames ({self.max_frames}) must be "
                             f"multiples of the patch size {(pf, pt)}")
        if self.padding not in ("mask", "zeros"):
            raise ValueError(f"padding must be 'mask' or 'zeros', got {self.padding!r}")
        if self.mask not in ("tf_blocks", "multiblock"):
            raise ValueError(f"mask must be 'tf_blocks' or 'multiblock', got {self.mask!r}")
        if self.mask_corners not in CORNERS:
            raise ValueError(f"mask_corners must be one of {CORNERS}, got {self.mask_corners!r}")
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        if not 0 <= self.max_freq_hz <= self.sample_rate / 2:
            raise ValueError(f"max_freq_hz must lie in [0, {self.sample_rate / 2}] (0: Nyquist), got {self.max_freq_hz}")

    @property
    def patch(self) -> tuple[int, int]:
        return pair(self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        pf, pt = self.patch
        return self.num_mel_bins // pf, self.max_frames // pt

    @property
    def min_samples(self) -> int:
        """Samples (at ``sample_rate``) needed for one patch of frames."""
        win = int(self.sample_rate * self.frame_length_ms / 1000)
        hop = int(self.sample_rate * self.frame_shift_ms / 1000)
        return win + (self.patch[1] - 1) * hop


# ----------------------------------------------------------------------------- decoding + features
def decode_audio(x: Any, sampling_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Any audio input -> (mono float32 waveform (n,), sample rate).

    Accepts a file path, encoded bytes / a file object (WAV, FLAC, OGG: decoded with soundfile),
    a dict ``{"array", "sampling_rate"}`` (Hugging Face ``datasets`` Audio), or a numpy array /
    torch tensor of shape (n,), (n, C) or (C, n) (the shorter axis is the channels; integer PCM is
    scaled to [-1, 1]) together with ``sampling_rate``. Channels are averaged.
    """
    if isinstance(x, dict):
        if "array" not in x:
            raise ValueError(f"an audio dict needs an 'array' key, got keys {sorted(x)}")
        return decode_audio(x["array"], x.get("sampling_rate", sampling_rate))
    if isinstance(x, (str, Path, bytes, bytearray, io.IOBase)):
        src = io.BytesIO(bytes(x)) if isinstance(x, (bytes, bytearray)) else x
        if isinstance(src, (str, Path)) and not Path(src).is_file():
            raise ValueError(f"audio file not found: {src}")
        try:
            data, sr = sf.read(src, dtype="float32", always_2d=True)  # (n, C)
        except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError
            name = src if isinstance(src, (str, Path)) else "audio bytes"
            reason = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "the audio bytes", str(err)).strip().splitlines()
            raise ValueError(f"could not decode {name}: {reason[0] if reason else type(err).__name__}") from None
        return _to_mono(torch.from_numpy(data), channels_last=True), int(sr)
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number)) or np.iscomplexobj(x):
            raise ValueError(f"audio arrays must be real numbers, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a path, bytes, dict, numpy array or tensor, got {type(x).__name__}")
    if sampling_rate is None:
        raise ValueError("sampling_rate is required for audio given as an array")
    sampling_rate = check_sampling_rate(sampling_rate)
    if x.dtype in (torch.int16, torch.int32, torch.int8, torch.uint8):
        scale = {torch.int16: 32768.0, torch.int32: 2147483648.0, torch.int8: 128.0}.get(x.dtype)
        x = (x.float() - 128.0) / 128.0 if x.dtype == torch.uint8 else x.float() / scale
    elif x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"audio dtype {x.dtype} is not supported")
    return _to_mono(x.float(), channels_last=None), int(sampling_rate)


MAX_SECONDS = 3600  # one clip: longer input is a mistake (or a memory bomb), not a sample
MAX_SAMPLING_RATE = 10_000_000  # Hz; above it a "sampling rate" is a mistake, not audio
MAX_RESAMPLE_TERMS = 4096  # reduced ratio new/orig whose terms exceed this is approximated (see _resample)


def check_sampling_rate(sampling_rate: Any) -> int:
    """A sampling rate given by a caller -> int Hz, or a ValueError / TypeError saying what is expected."""
    if isinstance(sampling_rate, (bool, str, bytes)) or not isinstance(sampling_rate, (int, float, np.integer,
                                                                                         np.floating)):
        raise TypeError(f"sampling_rate must be a number of Hz, got {type(sampling_rate).__name__} {sampling_rate!r}")
    if not np.isfinite(sampling_rate) or not 1 <= sampling_rate <= MAX_SAMPLING_RATE:
        raise ValueError(f"sampling_rate must lie in [1, {MAX_SAMPLING_RATE}] Hz, got {sampling_rate}")
    return int(round(float(sampling_rate)))


def _resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """``torchaudio.functional.resample``, whose sinc kernel is (new', ~orig') for the reduced ratio
    new'/orig': for rates sharing no large divisor (44101 -> 16000 Hz) that is gigabytes, so such a
    ratio is replaced by the nearest one with terms <= MAX_RESAMPLE_TERMS (for rates of 4-200 kHz
    a pitch change of at most 0.013%)."""
    ratio = Fraction(new, orig)
    if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_TERMS:
        ratio = ratio.limit_denominator(MAX_RESAMPLE_TERMS)
        if ratio.numerator == 0 or ratio.numerator > MAX_RESAMPLE_TERMS:  # extreme ratios: a coarse one
            ratio = Fraction(max(1, min(MAX_RESAMPLE_TERMS, round(new / orig))), 1) if new >= orig else \
                Fraction(1, max(1, min(MAX_RESAMPLE_TERMS, round(orig / new))))
        orig, new = ratio.denominator, ratio.numerator
    return resample(wav, orig, new)


def _to_mono(x: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
    if x.dim() == 1:
        return x
    if x.dim() != 2:
        raise ValueError(f"audio must have shape (n,), (n, C) or (C, n), got {tuple(x.shape)}")
    if channels_last is None:
        channels_last = x.shape[1] < x.shape[0]
    return x.mean(1) if channels_last else x.mean(0)


class MMJepaAudioFeatureExtractor(SequenceFeatureExtractor):
    """Audio -> ``input_features`` (B, num_mel_bins, max_frames) float32, normalised log-mel, and
    (``padding="mask"``) ``input_features_valid`` (B, N) bool over the patch tokens.

    A transformers feature extractor: ``save_pretrained`` / ``from_pretrained`` /
    ``AutoFeatureExtractor.from_pretrained`` (after ``import mmjepa``) keep its options — the audio
    modality's (:class:`AudioConfig`), the normalisation statistics it was fitted with included.
    """

    model_input_names = ["input_features", "input_features_valid"]

    def __init__(self, cfg: AudioConfig | None = None, **options):
        cfg = cfg or AudioConfig(**options_of(AudioConfig, options))
        super().__init__(feature_size=cfg.num_mel_bins, sampling_rate=cfg.sample_rate, padding_value=0.0)
        self.cfg = cfg

    def waveform(self, audio: Any, sampling_rate: int | None = None) -> torch.Tensor:
        """Decode, mix to mono, check, and resample to ``cfg.sample_rate`` -> (n,) float32."""
        wav, sr = decode_audio(audio, sampling_rate)
        sr = check_sampling_rate(sr)
        if wav.numel() == 0:
            raise ValueError("audio is empty")
        if not torch.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples")
        if wav.abs().max() < self.cfg.silence_threshold:
            raise ValueError(f"audio is silent (peak amplitude {float(wav.abs().max()):.2e} "
                             f"< silence_threshold {self.cfg.silence_threshold})")
        if wav.numel() / sr > MAX_SECONDS:
            raise ValueError(f"audio is {wav.numel() / sr:.0f} s long; at most {MAX_SECONDS} s per clip (cut it first)")
        if sr != self.cfg.sample_rate:
            wav = _resample(wav, sr, self.cfg.sample_rate)
        if wav.numel() < self.cfg.min_samples:
            secs = wav.numel() / self.cfg.sample_rate
            raise ValueError(f"audio is too short: {wav.numel()} samples ({secs:.3f} s) at {self.cfg.sample_rate} Hz, "
                             f"need {self.cfg.min_samples} for one {self.cfg.patch} patch of frames")
        return wav

    def fbank(self, wav: torch.Tensor) -> torch.Tensor:
        """(n,) waveform at ``cfg.sample_rate`` -> (T, num_mel_bins) Kaldi log-mel filterbank (AST settings)."""
        return kaldi.fbank(wav.unsqueeze(0), htk_compat=True, sample_frequency=self.cfg.sample_rate,
                           use_energy=False, window_type="hanning", num_mel_bins=self.cfg.num_mel_bins,
                           dither=0.0, frame_length=self.cfg.frame_length_ms, frame_shift=self.cfg.frame_shift_ms,
                           high_freq=self.cfg.max_freq_hz)

    def log_mel(self, audio: Any, sampling_rate: int | None = None) -> torch.Tensor:
        """Unnormalised, uncropped (T, num_mel_bins) log-mel features of one clip."""
        return self.fbank(self.waveform(audio, sampling_rate))

    def preprocess(self, audio: Any, sampling_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One clip -> features (F, max_frames) and token validity (N,) bool."""
        # frames past max_frames are cropped: the filterbank sees only the samples of the first
        # max_frames frames (the same features: each frame is computed from its own samples), so a
        # long clip costs no more memory than a max_frames one
        win, hop = int(self.cfg.sample_rate * self.cfg.frame_length_ms / 1000), \
            int(self.cfg.sample_rate * self.cfg.frame_shift_ms / 1000)
        wav = self.waveform(audio, sampling_rate)[: win + (self.cfg.max_frames - 1) * hop]
        feats = (self.fbank(wav) - self.cfg.mean) / self.cfg.std  # (T, F)
        T = min(feats.shape[0], self.cfg.max_frames)
        out = torch.zeros(self.cfg.num_mel_bins, self.cfg.max_frames)
        out[:, :T] = feats[:T].T
        Fg, Tg = self.cfg.grid
        cols = torch.arange(Tg) < -(-T // self.cfg.patch[1])  # time patches holding real frames
        if self.cfg.padding == "zeros":
            cols[:] = True
        return out, cols.repeat(Fg)  # (F, T), (Fg*Tg,)

    def __call__(self, audio: Any, sampling_rate: int | None = None,
                 return_tensors: str | None = "pt") -> dict[str, torch.Tensor]:
        clips = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not clips:
            raise ValueError("no audio given")
        feats, valid = zip(*(self.preprocess(c, sampling_rate) for c in clips))
        out = {"input_features": torch.stack(feats)}
        if self.cfg.padding == "mask":
            out["input_features_valid"] = torch.stack(valid)
        return BatchFeature(out)

    def to_dict(self) -> dict[str, Any]:
        """The options (what ``save_pretrained`` writes), JSON-ready."""
        return {**dataclasses.asdict(self.cfg), "feature_extractor_type": type(self).__name__}


AudioProcessor = MMJepaAudioFeatureExtractor  # the name used inside mmjepa


def compute_normalization_stats(clips: Iterable[Any], cfg: AudioConfig | None = None,
                                sampling_rate: int | None = None, skip_errors: bool = False) -> tuple[float, float]:
    """Mean and std of the log-mel features over every frame and bin of ``clips`` (paths, arrays
    with ``sampling_rate``, or sample dicts with ``audio`` + ``sampling_rate``); put them in
    ``AudioConfig(mean=..., std=...)``. ``skip_errors`` skips clips the processor rejects."""
    proc = AudioProcessor(cfg or AudioConfig())
    total, total_sq, count = 0.0, 0.0, 0
    for c in clips:
        if isinstance(c, dict) and "audio" in c:
            c, sr = c["audio"], c.get("sampling_rate", sampling_rate)
        else:
            sr = sampling_rate
        try:
            f = proc.log_mel(c, sr).double()
        except ValueError:
            if skip_errors:
                continue
            raise
        total += float(f.sum())
        total_sq += float((f * f).sum())
        count += f.numel()
    if count == 0:
        raise ValueError("no audio to compute statistics from")
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 1e-12) ** 0.5


# ----------------------------------------------------------------------------- embedding
class AudioPatchEmbed(GridPatchEmbed):
    """(B, F, T) log-mel -> (B, N, D) patch tokens (frequency-major) + fixed 2-D sin-cos positions."""

    def __init__(self, cfg: AudioConfig, dim: int, add_positions: bool = True):
        super().__init__(cfg.grid, 1, cfg.patch, dim, add_positions)
        self.cfg = cfg

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        expected = (self.cfg.num_mel_bins, self.cfg.max_frames)
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(f"input_features must have shape (B, {expected[0]}, {expected[1]}), got "
                             f"{tuple(input_features.shape)}; use AudioProcessor to prepare audio")
        return self.tokens(input_features.unsqueeze(1))  # (B, N, D), N = Fg * Tg frequency-major


# ----------------------------------------------------------------------------- mask samplers
def _valid_columns(valid: torch.Tensor | None, b: int, grid: tuple[int, int]) -> torch.Tensor:
    """Time-patch columns of sample ``b`` that hold real frames -> (Tv,) int64."""
    if valid is None:
        return torch.arange(grid[1])
    return valid[b].reshape(grid).any(0).nonzero().squeeze(1)


def _pack_groups(groups: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per sample, M index rows of any length -> (B, M, K) padded with 0, validity (or None)."""
    B, M = len(groups), len(groups[0])
    flat, valid = pack_indices([r for g in groups for r in g])
    return flat.reshape(B, M, -1), (None if valid is None else valid.reshape(B, M, -1))


def _mask_set(contexts: list[torch.Tensor], targets: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    context, cv = pack_indices(contexts)
    target, tv = _pack_groups(targets)
    out = {"context": context, "target": target}
    if cv is not None:
        out["context_valid"] = cv
    if tv is not None:
        out["target_valid"] = tv
    return out


@dataclass
class TimeFrequencyBlocks:
    """A-JEPA-style time-frequency masking on an (F, T) patch grid.

    ``num_time_targets`` blocks span every frequency over a run of time patches (``time_scale`` of
    the sample's real time patches); ``num_freq_targets`` blocks span every real time patch over a
    run of frequency patches (``freq_scale`` of F). Each block is one target group; the context is
    every real token outside the targets. Scales are drawn once per batch, positions per sample.
    """

    grid: tuple[int, int]
    num_time_targets: int = 2
    num_freq_targets: int = 2
    time_scale: tuple[float, float] = (0.1, 0.25)
    freq_scale: tuple[float, float] = (0.1, 0.25)

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        if self.num_time_targets < 0 or self.num_freq_targets < 0 or self.num_time_targets + self.num_freq_targets < 1:
            raise ValueError("need at least one time or frequency target block")
        if self.num_freq_targets and self.grid[0] < 2:
            raise ValueError(f"frequency blocks need at least 2 frequency patches, got a grid of {self.grid}")
        for name in ("time_scale", "freq_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi < 1.0:
                raise ValueError(f"{name} must satisfy 0 < min <= max < 1, got {(lo, hi)}")

    def __call__(self, batch_size: int, generator: torch.Generator, valid: torch.Tensor | None = None,
                 **_: Any) -> dict[str, torch.Tensor]:
        g = generator
        Fg, Tg = self.grid
        r_t, r_f = torch.rand(2, generator=g).tolist()
        s_t = self.time_scale[0] + r_t * (self.time_scale[1] - self.time_scale[0])
        s_f = self.freq_scale[0] + r_f * (self.freq_scale[1] - self.freq_scale[0])
        h = min(max(1, round(s_f * Fg)), Fg - 1)
        contexts, targets = [], []
        for b in range(batch_size):
            cols = _valid_columns(valid, b, self.grid)  # (Tv,)
            Tv = len(cols)
            if Tv == 0:
                raise ValueError(f"sample {b} has no real tokens")
            blocks = []  # (Fg, Tg) bool per target group
            w = min(max(1, round(s_t * Tv)), max(Tv - 1, 1))
            for _ in range(self.num_time_targets):
                m = torch.zeros(Fg, Tg, dtype=torch.bool)
                if Tv > 1:  # a one-patch clip has no time block that leaves context
                    start = int(torch.randint(0, Tv - w + 1, (1,), generator=g))
                    m[:, cols[start : start + w]] = True
                blocks.append(m)
            for _ in range(self.num_freq_targets):
                m = torch.zeros(Fg, Tg, dtype=torch.bool)
                start = int(torch.randint(0, Fg - h + 1, (1,), generator=g))
                m[start : start + h, cols] = True
                blocks.append(m)
            real = torch.zeros(Fg, Tg, dtype=torch.bool)
            real[:, cols] = True
            ctx = real & ~torch.stack(blocks).any(0)
            while not ctx.any():  # the targets cover everything: give back the last non-empty block
                last = max(i for i, m in enumerate(blocks) if m.any())
                blocks[last] = torch.zeros_like(blocks[last])
                ctx = real & ~torch.stack(blocks).any(0)
            contexts.append(ctx.flatten().nonzero().squeeze(1))
            targets.append([m.flatten().nonzero().squeeze(1) for m in blocks])
        return _mask_set(contexts, targets)


@dataclass
class ValidMultiBlock:
    """I-JEPA multi-block masking restricted to each sample's real time patches: the blocks are
    placed on the sample's own (F, Tv) sub-grid (``MultiBlock2D``) and mapped back to the full grid."""

    grid: tuple[int, int]
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 4
    corners: str = "reference"  # MultiBlock2D's corner draw

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        self._samplers: dict[int, MultiBlock2D] = {}
        self.full = MultiBlock2D(self.grid, self.num_targets, self.target_scale, self.target_aspect,
                                 self.context_scale, min_keep=self.min_keep, corners=self.corners)

    def _sub(self, Tv: int) -> MultiBlock2D:
        if Tv not in self._samplers:
            # small sub-grids cannot honour min_keep: keep at least one token per block there
            keep = max(0, min(self.min_keep, int(0.1 * self.grid[0] * Tv) - 1))
            self._samplers[Tv] = MultiBlock2D((self.grid[0], Tv), self.num_targets, self.target_scale,
                                              self.target_aspect, self.context_scale, min_keep=keep,
                                              corners=self.corners)
        return self._samplers[Tv]

    def __call__(self, batch_size: int, generator: torch.Generator, valid: torch.Tensor | None = None,
                 **_: Any) -> dict[str, torch.Tensor]:
        if valid is None or bool(valid.all()):
            return self.full(batch_size, generator)
        Fg, Tg = self.grid
        contexts, targets = [], []
        for b in range(batch_size):
            cols = _valid_columns(valid, b, self.grid)
            Tv = len(cols)
            if Tv < 2:  # one time patch: each target is one random frequency patch of it
                perm = torch.randperm(Fg, generator=generator)
                n = min(self.num_targets, Fg - 1)
                tg = [perm[i % n : i % n + 1] * Tg + cols[0] for i in range(self.num_targets)]
                contexts.append(perm[n:].sort().values * Tg + cols[0])
                targets.append(tg)
                continue
            ms = self._sub(Tv)(1, generator)

            def remap(i: torch.Tensor) -> torch.Tensor:
                return (i // Tv) * Tg + cols[i % Tv]

            tg = [remap(t) for t in ms["target"][0]]
            # on tiny sub-grids I-JEPA's placement may give up on avoiding the targets: drop them
            # from the context, giving back target groups while that would leave it empty
            ctx = remap(ms["context"][0])
            while True:
                left = ctx[~torch.isin(ctx, torch.cat(tg))]
                if len(left):
                    break
                tg[max(i for i, t in enumerate(tg) if len(t))] = tg[0][:0]
            contexts.append(left)
            targets.append(tg)
        return _mask_set(contexts, targets)


# ----------------------------------------------------------------------------- plug-in
@register_modality
class AudioModality(Modality):
    name = "audio"
    input_key = "input_features"
    config_class = AudioConfig
    embed_class = AudioPatchEmbed
    processor_class = AudioProcessor
    processor_arg = "audio"
    hf_role = "feature_extractor"
    processor_kwargs = ("sampling_rate",)
    extensions = ("wav", "flac", "ogg", "mp3")
    sample_keys = ("input_features_valid",)

    @classmethod
    def decode(cls, data: bytes, ext: str, cfg: AudioConfig) -> dict[str, Any]:
        """Encoded bytes -> ``{"array": mono float32 waveform, "sampling_rate": int}``."""
        wav, sr = decode_audio(data)
        return {"array": wav.numpy(), "sampling_rate": sr}

    @classmethod
    def build_mask_sampler(cls, cfg: AudioConfig):
        if cfg.mask == "multiblock":
            return ValidMultiBlock(cfg.grid, cfg.num_targets, cfg.target_scale, cfg.target_aspect,
                                   cfg.context_scale, cfg.min_keep, corners=cfg.mask_corners)
        return TimeFrequencyBlocks(cfg.grid, cfg.num_time_targets, cfg.num_freq_targets, cfg.time_scale,
                                   cfg.freq_scale)

    @classmethod
    def valid_tokens(cls, batch: dict[str, Any]) -> torch.Tensor | None:
        valid = batch.get("input_features_valid")
        return None if valid is None else valid.bool()

    @classmethod
    def collate(cls, samples: list[dict[str, Any]], cfg: AudioConfig) -> dict[str, torch.Tensor]:
        """Stack per-sample ``input_features`` (F, T) and, when present, ``input_features_valid`` (N,)."""
        out = {"input_features": torch.stack([torch.as_tensor(s["input_features"]).float() for s in samples])}
        has_valid = [s.get("input_features_valid") is not None for s in samples]
        if any(has_valid):
            if not all(has_valid):
                raise ValueError("either every sample or none must have input_features_valid")
            out["input_features_valid"] = torch.stack([torch.as_tensor(s["input_features_valid"]).bool()
                                                       for s in samples])
        return out

    @classmethod
    def probe_features(cls, h: torch.Tensor, valid: torch.Tensor | None, cfg: AudioConfig) -> torch.Tensor:
        """The time-mean of each frequency row of the (F, T) token grid, concatenated -> (B, F*D).

        A patch token carries its frequency band only through its position embedding, which a
        global mean cancels; this frequency-resolved, time-averaged view keeps it."""
        grid = cfg.grid
        v = None if valid is None else valid.unflatten(1, grid)
        return masked_mean(h.unflatten(1, grid), v, dim=2).flatten(1)  # (B, F*D)

