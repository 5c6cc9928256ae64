"""An objective is one file, proven: a toy objective with parameters of its own — a variance hinge
(VICReg's variance term) on a learned projection of each sample's mean context latent — is
defined and registered here. Named in a recipe, it is trained, logged and checkpointed (resume and
export included) without a line of the core knowing it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmjepa import MMJepaModel
from mmjepa.engine import load_recipe, train
from mmjepa.layers import masked_mean
from mmjepa.objectives import Objective, ObjectiveConfig, ObjectiveOutput, register_objective

from test_train import Killed, flat_params, kill_at, tiny_recipe


@dataclass
class VarianceConfig(ObjectiveConfig):
    gamma: float = 1.0  # the target standard deviation of every projected dimension
    dim: int = 8


@register_objective
class ProjectedVariance(Objective):
    name = "projected_variance"
    config_class = VarianceConfig

    def __init__(self, cfg: VarianceConfig, model_config):
        super().__init__(cfg, model_config)
        self.proj = nn.Linear(model_config.hidden_size, cfg.dim)

    def forward(self, view) -> ObjectiveOutput | None:
        terms = {}
        for m in view.masks:
            z, _, valid = view.context(m)
            p = self.proj(masked_mean(z, valid))  # (B, dim)
            terms[f"variance/{m}"] = F.relu(self.cfg.gamma - p.std(0)).mean()
        return ObjectiveOutput(torch.stack(list(terms.values())).mean(), terms) if terms else None


def toy_recipe(tmp_path, name: str, **train_options) -> dict:
    model = {"objectives": {"intra": {}, "spread": {"type": "projected_variance", "weight": 0.5, "dim": 8}}}
    return tiny_recipe(tmp_path, name, model=model, train=train_options)


def test_the_toy_objective_is_trained_and_logged(tmp_path):
    r = train(load_recipe(toy_recipe(tmp_path, "run", max_steps=6)))
    assert list(r.model.objectives) == ["intra", "spread"]
    h = r.history[-1]
    assert h["loss/variance/image"] >= 0 and "loss/intra/image" in h
    torch.manual_seed(0)
    init = MMJepaModel(r.model.config)
    assert not torch.equal(r.model.objectives["spread"].proj.weight, init.objectives["spread"].proj.weight)
    # the weighted sum: the total loss of a batch is intra + 0.5 * variance
    batch_loss = [h["loss"] - h["loss/intra/image"] - 0.5 * h["loss/variance/image"] for h in r.history]
    assert max(abs(x) for x in batch_loss) < 1e-5


def test_the_toy_objective_is_checkpointed_resumed_and_exported(tmp_path):
    full = train(load_recipe(toy_recipe(tmp_path, "full", max_steps=6, save_every=3)))
    with pytest.raises(Killed):
        train(load_recipe(toy_recipe(tmp_path, "cut", max_steps=6, save_every=3)), callbacks=[kill_at(4)])
    resumed = train(load_recipe(toy_recipe(tmp_path, "cut", max_steps=6, save_every=3)))
    assert resumed.resumed_from.name == "step_00000003"
    assert torch.equal(flat_params(full.model), flat_params(resumed.model))  # its projection included
    exported = MMJepaModel.from_pretrained(resumed.export_dir)
    assert torch.equal(exported.objectives["spread"].proj.weight, resumed.model.objectives["spread"].proj.weight)
