"""The checkpoint manager on its own: atomic saves, rotation, the resume point, loading, export."""

from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from mmjepa.engine import CheckpointManager, list_checkpoints


@pytest.fixture
def acc_model(tmp_path):
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state()
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    (tmp_path / "recipe.yaml").write_text("name: test\n")
    return acc, model, opt


def step(model, opt):
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()


def test_save_rotate_and_find_the_resume_point(tmp_path, acc_model):
    acc, model, opt = acc_model
    mgr = CheckpointManager(acc, tmp_path / "run", keep=2)
    assert mgr.latest() is None and mgr.resume_path("auto") is None and mgr.resume_path("never") is None
    for s in (1, 2, 3):
        step(model, opt)
        mgr.save(s, {"step": s, "samples_seen": 2 * s}, tmp_path / "recipe.yaml")
    assert [p.name for p in mgr.list()] == ["step_00000002", "step_00000003"]  # the newest 2 kept
    assert mgr.resume_path("auto") == mgr.latest() == tmp_path / "run" / "checkpoints" / "step_00000003"
    assert mgr.resume_path(str(mgr.list()[0])) == mgr.list()[0]
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        mgr.resume_path(str(tmp_path / "nope"))
    assert mgr.saved_recipe() == {"name": "test"} and mgr.trainer_state(mgr.latest())["step"] == 3


def test_load_restores_the_saved_state(tmp_path, acc_model):
    acc, model, opt = acc_model
    mgr = CheckpointManager(acc, tmp_path / "run")
    step(model, opt)
    ckpt = mgr.save(1, {"step": 1}, tmp_path / "recipe.yaml")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, opt)
    assert not torch.equal(model.weight, saved["weight"])
    assert mgr.load(ckpt) == {"step": 1}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path, acc_model, monkeypatch):
    acc, model, opt = acc_model
    mgr = CheckpointManager(acc, tmp_path / "run")
    first = mgr.save(1, {"step": 1}, tmp_path / "recipe.yaml")

    def dies(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr("mmjepa.engine.checkpoint.atomic_replace_dir", dies)
    with pytest.raises(OSError):
        mgr.save(2, {"step": 2}, tmp_path / "recipe.yaml")
    assert list_checkpoints(tmp_path / "run") == [first]  # the half-written one is not a checkpoint
    assert (tmp_path / "run" / "checkpoints" / ".tmp_step_00000002").is_dir()
    mgr.clean_stale()
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))
    assert mgr.load(first) == {"step": 1}


def test_export_is_written_aside_then_renamed(tmp_path, acc_model):
    acc, model, opt = acc_model
    mgr = CheckpointManager(acc, tmp_path / "run")
    seen = {}

    def save(folder, state_dict):  # the recipe is already there, for the model card
        assert (folder / "recipe.yaml").is_file() and (folder / "training_state.json").is_file()
        os.makedirs(folder, exist_ok=True)
        seen.update(folder=folder, keys=sorted(state_dict))
        torch.save(state_dict, folder / "weights.pt")

    dest = mgr.export(model, save, tmp_path / "recipe.yaml", {"step": 7, "final": True})
    assert dest == tmp_path / "run" / "export" and seen["folder"].name == ".tmp_export"
    assert seen["keys"] == ["bias", "weight"]
    assert json.loads((dest / "training_state.json").read_text()) == {"step": 7, "final": True}
    assert (dest / "recipe.yaml").read_text() == "name: test\n" and not (tmp_path / "run" / ".tmp_export").exists()
