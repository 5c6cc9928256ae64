"""A modality is one file, proven: a toy fourth modality — a 1-D multichannel sensor signal stored
as ``.npy`` in shards — is defined entirely here. It trains through ``mmjepa train`` from shards
with the real collator, is embedded with ``model.embed`` through ``MMJepaProcessor``, saved with
``save_pretrained`` and reloaded; no core file knows it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from transformers import initialization as init

from mmjepa import MaskCollator, MMJepaModel, MMJepaProcessor
from mmjepa.layers import sincos_1d
from mmjepa.masking import RandomPatch
from mmjepa.modalities import Modality, register_modality
from mmjepa.shards import write_shards
from mmjepa_cli import main as cli_main


# ----------------------------------------------------------------------------- the plug-in
@dataclass
class SensorConfig:
    length: int = 64  # samples per signal
    channels: int = 3
    patch: int = 8  # samples per token
    mask_ratio: float = 0.5

    def __post_init__(self):
        if self.patch < 1 or self.length % self.patch:
            raise ValueError(f"length ({self.length}) must be a multiple of patch ({self.patch})")


class SensorEmbed(nn.Module):
    """(B, C, L) signals -> (B, L / patch, D) tokens + fixed 1-D sin-cos positions."""

    def __init__(self, cfg: SensorConfig, dim: int, add_positions: bool = True):
        super().__init__()
        self.cfg, self.dim, self.add_positions = cfg, dim, add_positions
        self.num_tokens = cfg.length // cfg.patch
        self.proj = nn.Conv1d(cfg.channels, dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.register_buffer("pos_embed", self.position_table(dim).unsqueeze(0), persistent=True)
        self.register_buffer("coords", self.grid_coords(), persistent=False)

    def grid_coords(self) -> torch.Tensor:
        return torch.arange(self.num_tokens).unsqueeze(1)  # (N, 1)

    def position_table(self, dim: int) -> torch.Tensor:
        return sincos_1d(dim, torch.arange(self.num_tokens))  # (N, dim)

    def reset_buffers(self) -> None:
        init.copy_(self.pos_embed, self.position_table(self.dim).unsqueeze(0))
        self.coords = self.grid_coords().to(self.pos_embed.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.cfg.channels, self.cfg.length):
            raise ValueError(f"sensor_values must be (B, {self.cfg.channels}, {self.cfg.length}), got {tuple(x.shape)}")
        x = self.proj(x.to(self.proj.weight.dtype)).transpose(1, 2)  # (B, N, D)
        return x + self.pos_embed if self.add_positions else x


class SensorProcessor:
    """Arrays (C, L) (or a list / a (B, C, L) batch) -> ``sensor_values`` (B, C, L) float32, standardised per channel."""

    def __init__(self, cfg: SensorConfig | None = None):
        self.cfg = cfg or SensorConfig()

    def __call__(self, signals: Any, return_tensors: str | None = "pt") -> dict[str, torch.Tensor]:
        arr = np.asarray(signals, dtype=np.float32) if not isinstance(signals, list) else np.stack(signals)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (self.cfg.channels, self.cfg.length):
            raise ValueError(f"expected signals of shape ({self.cfg.channels}, {self.cfg.length}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("signal contains NaN or infinite values")
        x = torch.from_numpy(arr.astype(np.float32))
        x = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-6)
        return {"sensor_values": x}


@register_modality
class SensorModality(Modality):
    name = "sensor"
    input_key = "sensor_values"
    config_class = SensorConfig
    embed_class = SensorEmbed
    processor_class = SensorProcessor
    processor_arg = "signals"
    extensions = ("npy",)

    @classmethod
    def decode(cls, data: bytes, ext: str, cfg: SensorConfig) -> np.ndarray:
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"could not decode sensor bytes: {err}") from None

    @classmethod
    def build_mask_sampler(cls, cfg: SensorConfig) -> RandomPatch:
        return RandomPatch(cfg.length // cfg.patch, cfg.mask_ratio)


# ----------------------------------------------------------------------------- data
def signal(label: int, rng: np.random.Generator, cfg: SensorConfig = SensorConfig()) -> np.ndarray:
    """Class k: sines of frequency k + 1 on every channel with random phases, plus noise."""
    t = np.arange(cfg.length) / cfg.length
    phases = rng.uniform(0, 2 * np.pi, (cfg.channels, 1))
    return (np.sin(2 * np.pi * (label + 1) * t + phases) + 0.1 * rng.standard_normal((cfg.channels, cfg.length))).astype(
        np.float32)


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sensor_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sensor")
    rng = np.random.default_rng(0)
    samples = [{"__key__": f"s{i:04d}", "npy": npy_bytes(signal(i % 4, rng)), "cls": str(i % 4).encode()}
               for i in range(64)]
    write_shards(samples, root / "shards", max_count=16, progress=False)
    recipe = {
        "model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1, "predictor_num_attention_heads": 2,
                  "modalities": {"sensor": {"length": 64, "channels": 3, "patch": 8}}},
        "data": {"sources": [{"type": "shards", "urls": "shards"}], "batch_size": 16, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"max_steps": 24, "log_every": 4, "tracker": "none", "progress": False,
                  "output_dir": str(root / "run")},
    }
    (root / "sensor.yaml").write_text(yaml.safe_dump(recipe))
    torch.manual_seed(0)
    assert cli_main(["train", str(root / "sensor.yaml")]) == 0  # the real CLI, the shards' relative path
    return root


def test_a_toy_modality_trains_through_mmjepa_train_from_shards(sensor_run):
    ckpts = sorted((sensor_run / "run" / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_00000024"]
    state = yaml.safe_load((sensor_run / "run" / "recipe.yaml").read_text())
    assert state["data"]["sources"][0]["urls"] == str(sensor_run / "shards")  # resolved against the recipe
    model = MMJepaModel.from_pretrained(sensor_run / "run" / "export")
    assert model.modality_names == ["sensor"] and isinstance(model.encoders["sensor"].embed, SensorEmbed)


def test_the_toy_model_learns(sensor_run):
    """On held-out signals with fixed masks, the trained model predicts its targets better than
    the same model at init; its embeddings are normalised (B, D)."""
    model = MMJepaModel.from_pretrained(sensor_run / "run" / "export").eval()
    torch.manual_seed(0)
    fresh = MMJepaModel(model.config).eval()
    rng = np.random.default_rng(1)
    proc = MMJepaProcessor.from_config(model.config)
    values = proc(signals=[signal(k % 4, rng) for k in range(32)])["sensor_values"]
    batch = MaskCollator.from_config(model.config, seed=0)([{"sensor_values": v} for v in values])
    with torch.no_grad():
        assert model(**batch).loss < 0.8 * fresh(**batch).loss
    emb = model.embed(sensor_values=values)["sensor"]
    assert emb.shape == (32, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(32), atol=1e-5)


def test_the_toy_model_saves_and_reloads_bit_exactly(sensor_run, tmp_path):
    model = MMJepaModel.from_pretrained(sensor_run / "run" / "export").eval()
    model.save_pretrained(tmp_path / "again")
    again = MMJepaModel.from_pretrained(tmp_path / "again").eval()
    x = MMJepaProcessor.from_config(model.config)(signals=signal(2, np.random.default_rng(3)))
    assert torch.equal(model.embed(**x)["sensor"], again.embed(**x)["sensor"])
    # a plug-in without a transformers role: its processor is rebuilt from the options saved with it
    loaded = MMJepaProcessor.from_pretrained(tmp_path / "again")
    assert torch.equal(loaded(signals=signal(2, np.random.default_rng(3)))["sensor_values"], x["sensor_values"])
    sd, sd2 = model.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_a_core_file_names_no_modality():
    """The core's modules (model, masking, objectives, data, engine, evaluation, processing) hold
    no built-in modality name: those live in the plug-ins (and in the built-in datasets, the demo and
    the I-JEPA image converters)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "mmjepa"
    core = [p for p in root.rglob("*.py") if p.name not in ("datasets.py", "demo.py", "convert.py", "convert_command.py")]
    offenders = []
    for path in core:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for name in ('"image"', '"audio"', '"text"', "'image'", "'audio'", "'text'"):
                if name in code:
                    offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
