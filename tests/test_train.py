"""The trainer (mmjepa.engine) in one process: results, checkpoints, exact resume, atomic saves,
schedules, gradient accumulation, precision and memory options, trackers, the CLI."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

from mmjepa import MMJepaModel
from mmjepa.engine.optim import cosine, cosine_with_warmup
from mmjepa.engine import TrainingInterrupted, list_checkpoints, load_recipe, train
from mmjepa_cli import main as cli_main

# masks that cover a fixed 7x7 block of the 8x8 grid: identical for any generator, so runs that
# see the same samples in different batch layouts must reach the same weights
FIXED_MASKS = {"num_targets": 1, "target_scale": [1.0, 1.0], "context_scale": [1.0, 1.0], "allow_overlap": True}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_recipe(tmp_path, name: str = "run", **sections) -> dict:
    recipe = {
        "model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1, "predictor_num_attention_heads": 2,
                  "modalities": {"image": {"image_size": 32, "patch_size": 4, "num_channels": 1, "image_mean": [0.5],
                                           "image_std": [0.5], "min_keep": 2}}},
        "data": {"sources": [{"type": "builtin", "name": "digits"}], "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "clip_grad": 1.0},
        "train": {"max_steps": 6, "log_every": 2, "tracker": "none", "progress": False,
                  "output_dir": str(tmp_path / name)},
    }
    for sec, values in sections.items():
        recipe[sec] = {**recipe[sec], **values}
    return recipe


def flat_params(model: torch.nn.Module, statistics: bool = True) -> torch.Tensor:
    """Every floating tensor of the state dict (``statistics=False``: without the embedding centres,
    running means that see micro-batches one by one under gradient accumulation, as BatchNorm's)."""
    return torch.cat([t.detach().float().flatten() for k, t in model.state_dict().items()
                      if t.is_floating_point() and (statistics or not k.startswith("centers."))])


class Killed(Exception):
    pass


def kill_at(step: int):
    def cb(s, logs):
        if s == step:
            raise Killed(f"killed at step {s}")
    return cb


def test_train_result_and_artifacts(tmp_path):
    r = train(load_recipe(tiny_recipe(tmp_path, train={"save_every": 2, "keep_checkpoints": 2})))
    assert r.steps == 6 and r.samples_seen == 48 and r.train_samples_per_s > 0
    assert [h["step"] for h in r.history] == [2, 4, 6]
    h = r.history[-1]
    for key in ("loss", "loss/intra/image", "image/pred_std", "image/target_std", "lr", "weight_decay", "ema_momentum",
                "grad_norm", "samples_per_s", "samples_seen"):
        assert key in h and math.isfinite(h[key]), key
    assert [p.name for p in list_checkpoints(r.output_dir)] == ["step_00000004", "step_00000006"]  # kept 2
    ckpt = r.checkpoint
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state_0.json",
            "recipe.yaml"} <= {p.name for p in ckpt.iterdir()}
    exported = MMJepaModel.from_pretrained(r.export_dir)
    assert torch.equal(flat_params(exported), flat_params(r.model))
    again = load_recipe(r.output_dir / "recipe.yaml")  # the resolved recipe reloads to the same recipe
    assert again == load_recipe(tiny_recipe(tmp_path, train={"save_every": 2, "keep_checkpoints": 2}))


def test_targets_move_by_ema(tmp_path):
    """The EMA targets move from the initial weights towards the context encoders, by less."""
    from accelerate.utils import set_seed

    r = train(load_recipe(tiny_recipe(tmp_path, train={"max_steps": 3})))
    set_seed(0)  # the trainer's seed: the same initial weights
    init = MMJepaModel(r.model.config)

    def vec(m):
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    moved_online = (vec(r.model.encoders) - vec(init.encoders)).norm()
    moved_target = (vec(r.model.target_encoders) - vec(init.target_encoders)).norm()
    assert 0 < moved_target < moved_online
    assert all(not p.requires_grad for p in r.model.target_encoders.parameters())


@pytest.mark.parametrize("num_workers,grad_accum", [(0, 1), (2, 2)])
def test_resume_after_kill_equals_uninterrupted(tmp_path, num_workers, grad_accum):
    """Kill at step 5 (last checkpoint: step 3), resume: same weights, EMA targets, optimizer
    and data position as the run that was never interrupted."""
    kw = dict(data={"num_workers": num_workers}, train={"save_every": 3, "max_steps": 8, "grad_accum": grad_accum})
    full = train(load_recipe(tiny_recipe(tmp_path, "full", **kw)))
    with pytest.raises(Killed):
        train(load_recipe(tiny_recipe(tmp_path, "cut", **kw)), callbacks=[kill_at(5)])
    resumed = train(load_recipe(tiny_recipe(tmp_path, "cut", **kw)))
    assert resumed.resumed_from.name == "step_00000003" and resumed.steps == 8
    assert torch.equal(flat_params(full.model), flat_params(resumed.model))
    assert [h["loss"] for h in full.history if h["step"] > 4] == [h["loss"] for h in resumed.history if h["step"] > 4]


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = {"n": 0}

    def dying_save(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save dies half-way through writing
            real_save(self, output_dir, **kw)
            with open(f"{output_dir}/model.safetensors", "wb") as f:
                f.write(b"truncated")
            raise Killed("killed during save")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", dying_save)
    recipe = tiny_recipe(tmp_path, train={"save_every": 2, "max_steps": 6})
    with pytest.raises(Killed):
        train(load_recipe(recipe))
    out = tmp_path / "run"
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    assert (out / "checkpoints" / ".tmp_step_00000004").exists()
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    r = train(load_recipe(recipe))
    assert r.resumed_from.name == "step_00000002" and r.steps == 6
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_schedules(tmp_path):
    r = train(load_recipe(tiny_recipe(tmp_path, optim={"lr": 2e-3, "start_lr": 1e-4, "final_lr": 1e-5,
                                                        "warmup_steps": 3, "weight_decay": 0.04,
                                                        "final_weight_decay": 0.4},
                                      train={"max_steps": 8, "log_every": 1})))
    for h in r.history:
        s = h["step"] - 1  # the values used for that step
        assert h["lr"] == pytest.approx(cosine_with_warmup(s, 8, 3, 1e-4, 2e-3, 1e-5))
        assert h["weight_decay"] == pytest.approx(cosine(s, 8, 0.04, 0.4))
        assert h["ema_momentum"] == pytest.approx(0.996 + 0.004 * s / 8)


def test_grad_accum_equals_bigger_batch(tmp_path):
    model = {"modalities": {"image": {**tiny_recipe(tmp_path)["model"]["modalities"]["image"], **FIXED_MASKS}}}
    a = train(load_recipe(tiny_recipe(tmp_path, "a", model=model, data={"batch_size": 4},
                                      train={"grad_accum": 2, "max_steps": 3})))
    b = train(load_recipe(tiny_recipe(tmp_path, "b", model=model, data={"batch_size": 8},
                                      train={"max_steps": 3})))
    assert a.samples_seen == b.samples_seen == 24
    assert torch.allclose(flat_params(a.model, False), flat_params(b.model, False), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_weights(tmp_path):
    a = train(load_recipe(tiny_recipe(tmp_path, "a", train={"max_steps": 3})))
    b = train(load_recipe(tiny_recipe(tmp_path, "b", train={"max_steps": 3, "gradient_checkpointing": True})))
    assert torch.allclose(flat_params(a.model), flat_params(b.model), atol=1e-6)


def test_bf16_mixed_precision(tmp_path):
    r = train(load_recipe(tiny_recipe(tmp_path, train={"max_steps": 2, "mixed_precision": "bf16"})))
    assert all(math.isfinite(h["loss"]) for h in r.history)
    assert next(r.model.parameters()).dtype == torch.float32  # weights stay fp32 under autocast


def test_epochs_define_the_length(tmp_path):
    r = train(load_recipe(tiny_recipe(tmp_path, data={"batch_size": 64},
                                      train={"max_steps": None, "epochs": 1, "log_every": 100})))
    assert r.steps == 1257 // 64 and r.history[-1]["epoch"] == 1


def test_tensorboard_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    r = train(load_recipe(tiny_recipe(tmp_path, train={"max_steps": 2, "tracker": "tensorboard"})))
    assert list((r.output_dir / "logs").rglob("events.out.tfevents*"))


def test_cli(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert cli_main(["train", str(path), "train.max_steps=2", "train.save_every=0"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert cli_main(["train", str(path), "train.max_step=2"]) == 2
    assert "train.max_step" in capsys.readouterr().err
    for argv in ([str(path), "--print", "train.max_steps=3"], [str(path), "train.max_steps=3", "--print"]):
        assert cli_main(["train", *argv]) == 0  # overrides may come before or after the options
        assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 3


def test_train_accepts_overrides_on_a_recipe(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path))
    r = train(recipe, ["train.max_steps=1", f"train.output_dir={tmp_path / 'o'}"])
    assert r.steps == 1 and r.output_dir == tmp_path / "o"
    assert recipe.train.max_steps == 6  # the recipe object is left alone


@pytest.mark.slow
def test_torch_compile(tmp_path):
    a = train(load_recipe(tiny_recipe(tmp_path, "a", train={"max_steps": 3})))
    b = train(load_recipe(tiny_recipe(tmp_path, "b", train={"max_steps": 3, "compile": True})))
    assert torch.allclose(flat_params(a.model), flat_params(b.model), atol=1e-4)


def test_recipe_dict_is_not_modified(tmp_path):
    d = tiny_recipe(tmp_path)
    before = copy.deepcopy(d)
    load_recipe(d, ["train.max_steps=3", "model.modalities.image.patch_size=8"])
    assert d == before


def interrupt_at(step: int):
    def cb(s, logs):
        if s == step:
            raise KeyboardInterrupt
    return cb


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"save_every": 2, "max_steps": 6})
    with pytest.raises(TrainingInterrupted, match=r"stopped at step 3; last checkpoint: step 2 \(.*step_00000002\); "
                                                  r"run the same command to resume"):
        train(load_recipe(recipe), callbacks=[interrupt_at(3)])
    resumed = train(load_recipe(recipe))
    assert resumed.resumed_from.name == "step_00000002" and resumed.steps == 6


def test_rerunning_a_finished_run_says_so(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"max_steps": 2})))
    assert cli_main(["train", str(path)]) == 0
    capsys.readouterr()
    assert cli_main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"already finished: {tmp_path / 'run'} holds a finished run of 2 steps")
    assert "nan" not in out and "samples/s" not in out
    r = train(load_recipe(path))
    assert r.already_finished and r.steps == 2 and r.history == []
    assert cli_main(["train", str(path), "train.max_steps=3"]) == 0  # a longer run continues it
    assert "trained 3 steps" in capsys.readouterr().out


def test_an_output_dir_of_another_model_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"max_steps": 1})))
    assert cli_main(["train", str(path)]) == 0
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    capsys.readouterr()
    assert cli_main(["train", str(path), "model.hidden_size=64", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a run of another model" in err and "model.hidden_size (32 there, 64 here)" in err
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before  # nothing written or loaded
    assert cli_main(["train", str(path), "model.hidden_size=64", "train.resume=never"]) == 0


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, capsys):
    base = tiny_recipe(tmp_path, train={"max_steps": 1})
    cases = [({"data": {**base["data"], "sources": [{"type": "shards", "urls": str(tmp_path / "no_shards")}]}},
              "no such folder or file: "),
             ({"model": {**base["model"], "pretrained": str(tmp_path / "no_model")}}, "model.pretrained: no such folder"),
             ({"model": {**base["model"], "modalities": {"text": {"vocab_size": 80, "max_length": 16,
                                                                  "tokenizer": str(tmp_path / "no_tok")}}}},
              "tokenizer: no such folder")]
    for change, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        assert cli_main(["train", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Repo id" not in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()
