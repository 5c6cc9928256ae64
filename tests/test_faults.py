"""Fault injection, the quick cases (the whole suite is ``mmjepa bench faults``, see RELIABILITY.md):
NaN/Inf steps skipped, counted and, in a row, stopping the run with its state saved; a kill -9
inside a checkpoint write, then an exact resume; a full disk while saving; corrupt shards with an
exact skipped count."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mmjepa.bench import faults
from mmjepa.engine import NonFiniteError, list_checkpoints, load_recipe, train
from mmjepa.engine.checkpoint import CheckpointManager, no_space
from mmjepa_cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    snapshots = {}

    def keep(trainer_holder):
        def cb(step, logs):
            snapshots[step] = state(trainer_holder["model"])
        return cb

    # forward calls 3 (NaN) and 4 (Inf) are steps 3 and 4
    holder = {}
    recipe = load_recipe(faults.tiny_recipe(tmp_path / "run", train={"max_steps": 6, "log_every": 1}))
    from mmjepa.engine import Trainer

    with faults.poisoned_loss(lambda i: {3: float("nan"), 4: float("inf")}.get(i)):
        trainer = Trainer(recipe, callbacks=[keep(holder)])
        holder["model"] = trainer.unwrapped
        result = trainer.run()
    assert result.skipped_steps == 2 and result.steps == 6
    for k, v in snapshots[2].items():  # no optimizer step, no EMA update, no centre update
        assert torch.equal(v, snapshots[3][k]) and torch.equal(v, snapshots[4][k]), k
    assert any(not torch.equal(v, snapshots[5][k]) for k, v in snapshots[4].items())  # training goes on
    assert all(torch.isfinite(v).all() for v in snapshots[6].values() if v.is_floating_point())
    logs = {h["step"]: h for h in result.history}
    assert logs[6]["skipped_steps"] == 2 and logs[2]["skipped_steps"] == 0
    assert all(k not in logs[3] for k in ("loss", "loss/intra/image"))  # nothing averaged from a bad step
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history if "loss" in h)


def test_bad_steps_in_a_row_stop_the_run_with_its_state_saved(tmp_path, capsys):
    recipe = faults.tiny_recipe(tmp_path / "run", train={"max_steps": 20, "max_bad_steps": 3, "save_every": 2})
    with faults.poisoned_loss(lambda i: float("nan") if i >= 4 else None):
        with pytest.raises(NonFiniteError) as err:
            train(load_recipe(recipe))
    msg = str(err.value)
    assert "\n" not in msg and "NaN/Inf for 3 consecutive steps (4-6" in msg and "step_00000006" in msg
    ckpts = list_checkpoints(tmp_path / "run")
    assert ckpts[-1].name == "step_00000006" and faults.checkpoint_loads(ckpts[-1])
    assert json.loads((ckpts[-1] / "trainer_state_0.json").read_text())["skipped_steps"] == 3
    # the CLI says it in one line (exit code 2); the saved state resumes
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**recipe, "train": {**recipe["train"], "output_dir": str(tmp_path / "cli")}}))
    capsys.readouterr()
    with faults.poisoned_loss(lambda i: float("nan") if i >= 2 else None):
        assert cli_main(["train", str(path)]) == 2
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mmjepa train:")]
    assert len(err_lines) == 1 and "NaN/Inf for 3 consecutive steps" in err_lines[0]
    resumed = train(load_recipe(recipe))
    assert resumed.resumed_from.name == "step_00000006" and resumed.steps == 20 and resumed.skipped_steps == 3


def test_kill_9_inside_a_checkpoint_write_then_exact_resume(tmp_path):
    """A trainer process SIGKILLs itself with the weights file of its second checkpoint half
    written: the first checkpoint stays the latest, loads, and the resumed run ends with the
    weights of a run never interrupted (bit for bit)."""
    import yaml

    kw = {"train": {"max_steps": 6, "save_every": 2}}
    reference = train(load_recipe(faults.tiny_recipe(tmp_path / "reference", **kw)))
    (tmp_path / "child.py").write_text(faults.CHILD)
    recipe = tmp_path / "cut.yaml"
    recipe.write_text(yaml.safe_dump(faults.tiny_recipe(tmp_path / "cut", **kw)))
    proc = subprocess.run(faults._train_cmd(tmp_path, recipe), env=faults._child_env(FAULT_DIE_IN_SAVE="2:half"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = list_checkpoints(tmp_path / "cut")
    assert [c.name for c in ckpts] == ["step_00000002"] and faults.checkpoint_loads(ckpts[-1])
    assert (tmp_path / "cut" / "checkpoints" / ".tmp_step_00000004").is_dir()  # the half-written one
    resumed = train(load_recipe(faults.tiny_recipe(tmp_path / "cut", **kw)))
    assert resumed.resumed_from.name == "step_00000002" and resumed.steps == 6
    assert not list((tmp_path / "cut" / "checkpoints").glob(".tmp_*"))
    ref, got = state(reference.model), state(resumed.model)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint(tmp_path):
    r = faults.disk_full(tmp_path)
    assert r["survived"] == 1, r
    assert "No space left on device" in r["message"] and "step_00000002 is intact" in r["message"]


@pytest.mark.parametrize("err, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed"), errno.ENOSPC),
    (OSError(errno.EACCES, "Permission denied"), None),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 65536 vs 65424"), None),
])
def test_full_disk_errors_are_recognised_in_every_writers_words(err, code):
    assert no_space(err) == code


def test_a_write_failing_without_saying_why_on_a_full_disk_counts_as_full(tmp_path, monkeypatch):
    """torch.save on a full disk may only say "unexpected pos ...": then the free space decides."""
    mgr = CheckpointManager(None, tmp_path)
    (tmp_path / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000002" / "model.safetensors").write_bytes(b"\0" * 5000)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=4000))
    assert mgr._out_of_space() == errno.ENOSPC
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=6000))
    assert mgr._out_of_space() is None


def test_corrupt_audio_and_text_fields_are_skipped_and_counted_exactly(tmp_path):
    r = faults.corrupt_multimodal_shards(tmp_path)
    assert r["crashes"] == 0, r.get("error")
    assert r["reported_skipped"] == r["expected_skipped"] == 7 and r["samples_trained"] == 48 and r["survived"] == 1


def test_corrupt_shards_are_skipped_and_counted_exactly(tmp_path):
    r = faults.corrupt_shards(tmp_path)
    assert r["crashes"] == 0, r.get("error")
    # 6 corrupt samples + 2 (the truncated tar: its cut sample, its unreadable rest) + 1 (the deleted shard)
    assert r["reported_skipped"] == r["expected_skipped"] == 9, r
    assert r["samples_trained"] == r["good_samples_planned"] and r["memory_bounded"], r
    assert r["missing_shard_at_start"].startswith("no such shard file")
    assert r["survived"] == r["trials"] == 2


MP_NAN = textwrap.dedent('''
    import json, os, sys, torch
    from mmjepa.bench import faults
    from mmjepa.engine import load_recipe, train
    rank = int(os.environ.get("RANK", 0))
    # rank 1 alone sees NaN losses at steps 3 and 4
    with faults.poisoned_loss(lambda i: float("nan") if rank == 1 and i in (3, 4) else None):
        res = train(load_recipe(json.loads(sys.argv[1])))
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, f"{sys.argv[2]}/p{rank}.pt")
    json.dump({"skipped": res.skipped_steps}, open(f"{sys.argv[2]}/s{rank}.json", "w"))
''')


@pytest.mark.slow
def test_ranks_agree_on_skipping_a_step_only_one_of_them_saw_as_bad(tmp_path):
    (tmp_path / "mp.py").write_text(MP_NAN)
    recipe = faults.tiny_recipe(tmp_path / "run", train={"max_steps": 6, "ddp_timeout": 60})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(faults._free_port()),
           str(tmp_path / "mp.py"), json.dumps(recipe), str(tmp_path)]
    env = {**faults._child_env(), "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [json.loads((tmp_path / f"s{r}.json").read_text())["skipped"] for r in range(2)] == [2, 2]
    p0, p1 = (torch.load(tmp_path / f"p{r}.pt") for r in range(2))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)  # still identical replicas
    assert all(torch.isfinite(v).all() for v in p0.values() if v.is_floating_point())


@pytest.mark.slow
def test_the_quick_fault_suite(tmp_path):
    t0 = time.perf_counter()
    env = faults._child_env()
    proc = subprocess.run([sys.executable, "-m", "mmjepa", "bench", "faults", "--quick", "--json",
                           str(tmp_path / "faults.json")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "faults.json").read_text())
    for key in ("trials", "survived", "samples_lost", "checkpoints_lost", "bad_inputs_tried", "crashes"):
        assert isinstance(r[key], int), key
    assert r["survived"] == r["trials"] > 0 and r["crashes"] == r["samples_lost"] == r["checkpoints_lost"] == 0
    print(f"quick fault suite: {time.perf_counter() - t0:.0f} s", {k: r[k] for k in ("trials", "survived")})
