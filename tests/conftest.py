"""Shared fixtures: tiny configs so every test runs in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from mmjepa import MMJepaConfig
from mmjepa.engine.optim import build_optimizer


def tiny_image_config(**overrides) -> MMJepaConfig:
    """A 2-layer, 32-wide image model on 32x32 images in 4x4 patches (an 8x8 token grid)."""
    kw = dict(
        modalities={"image": {"image_size": 32, "patch_size": 4, "min_keep": 2}},
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        predictor_hidden_size=16, predictor_num_hidden_layers=2, predictor_num_attention_heads=2,
    )
    kw.update(overrides)
    return MMJepaConfig(**kw)


def train_on_batch(model, batch: dict, steps: int, lr: float = 3e-3) -> list[float]:
    """Train ``model`` ``steps`` times on one fixed batch (AdamW, no weight decay, the model's EMA
    schedule over ``steps``) -> the loss of every step."""
    opt = build_optimizer(model, lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_target(model.momentum(step, steps))
        losses.append(out.loss.item())
    return losses


@pytest.fixture
def tiny_config() -> MMJepaConfig:
    return tiny_image_config()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one intra-op thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
