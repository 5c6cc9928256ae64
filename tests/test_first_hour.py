"""The first hour of a new user, run as they would: the ``mmjepa`` command, from a temporary folder
outside the repository. Every answer is checked: help that tells the truth (and fast: no torch
imported), a recipe given by absolute path, bad paths, grey images, a finished run rerun, Ctrl-C,
and a reused output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mmjepa.datasets import shared_data_dir

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
SCRIPT = Path(sys.executable).parent / "mmjepa"
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "mmjepa"]
TINY = ["model.num_hidden_layers=1", "model.predictor_num_hidden_layers=1", "data.batch_size=8",
        "data.num_workers=0", "train.tracker=none", "train.progress=false", "train.log_every=1"]


def mmjepa(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CMD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def commands(help_text: str) -> list[str]:
    """The command names a help text lists under its positional choices."""
    lines = help_text.split("positional arguments:")[1].split("options:")[0].splitlines()
    return [line.split()[0] for line in lines[2:] if line.startswith("    ") and not line.startswith("     ")]


@pytest.fixture
def home(tmp_path) -> Path:
    """A working folder outside the repository."""
    assert REPO not in tmp_path.parents
    return tmp_path


def test_help_tells_the_truth_and_imports_no_torch(home):
    top = mmjepa(home, "--help")
    assert top.returncode == 0
    listed = commands(top.stdout)
    assert listed == ["shards", "train", "eval", "embed", "search", "export", "tokenizer", "demo", "bench", "push", "convert"]
    for name in listed:  # every listed command exists and answers --help
        r = mmjepa(home, name, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: mmjepa {name}"), (name, r.stderr)
        if "positional arguments:" in r.stdout and "KEY=VALUE" not in r.stdout and name not in ("shards", "demo"):
            for sub in commands(r.stdout):  # eval probe|spans, tokenizer train, bench speed|data|quality
                rs = mmjepa(home, name, sub, "--help")
                assert rs.returncode == 0 and rs.stdout.startswith(f"usage: mmjepa {name} {sub}"), (name, sub)
    assert mmjepa(home, "bench").returncode == 2 and mmjepa(home, "embed").returncode == 2  # --model missing
    assert mmjepa(home, "serve").returncode == 2
    assert mmjepa(home, "--version").stdout.startswith("mmjepa ")
    probe = ("import sys, mmjepa_cli\n"
             "for argv in (['--help'], ['train', '--help'], ['eval', 'spans', '--help'], ['bench', 'quality', '--help']):\n"
             "    try:\n        mmjepa_cli.main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'mmjepa') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=home, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "[]"  # parsed before importing anything heavy


def test_train_without_a_recipe_says_overrides_are_optional(home):
    r = mmjepa(home, "train")
    assert r.returncode == 2
    assert "usage: mmjepa train [-h] [--print] RECIPE [KEY=VALUE ...]" in r.stderr
    assert "missing RECIPE" in r.stderr and "KEY=VALUE overrides after it are optional" in r.stderr


def test_a_recipe_by_absolute_path_a_finished_rerun_and_a_reused_folder(home):
    recipe = str(RECIPES / "image" / "digits_ijepa_cpu.yaml")
    first = mmjepa(home, "train", recipe, "train.max_steps=3", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "trained 3 steps" in first.stdout and (home / "runs" / "digits_ijepa_cpu" / "export").is_dir()
    again = mmjepa(home, "train", recipe, "train.max_steps=3", *TINY)
    assert again.returncode == 0 and again.stdout.startswith("already finished:"), again.stdout
    other = mmjepa(home, "train", recipe, "train.max_steps=4", "model.hidden_size=48", *TINY)
    assert other.returncode == 2 and "holds a run of another model" in other.stderr
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1


def test_bad_paths_answer_in_one_line(home):
    r = mmjepa(home, "train", "no/such/recipe.yaml")
    assert r.returncode == 2 and r.stderr.strip() == "mmjepa train: recipe not found: no/such/recipe.yaml"
    raw = yaml.safe_load((RECIPES / "image" / "digits_ijepa_cpu.yaml").read_text())
    raw["data"]["sources"] = [{"type": "shards", "urls": "shards_that_are_not_here"}]
    (home / "bad.yaml").write_text(yaml.safe_dump(raw))
    r = mmjepa(home, "train", "bad.yaml", *TINY)
    assert r.returncode == 2 and "no such folder or file: " in r.stderr and "shards_that_are_not_here" in r.stderr
    assert "Traceback" not in r.stderr and not (home / "runs").exists()


@pytest.mark.skipif(shared_data_dir(required=False) is None, reason="needs the shared data folder (Tiny Shakespeare)")
def test_the_text_recipe_runs_from_another_folder(home):
    """Its tokenizer path is relative to the recipe file: from any folder it used to skip every
    sample ("Repo id must be in the form ...") and hang at step 0."""
    r = mmjepa(home, "train", str(RECIPES / "text" / "shakespeare_cpu.yaml"), "train.max_steps=2", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trained 2 steps" in r.stdout and "0 bad samples skipped" in r.stdout
    config = yaml.safe_load((home / "runs" / "shakespeare_cpu" / "export" / "config.json").read_text())
    assert config["modalities"]["text"]["vocab_fingerprint"]  # the tokenizer it was trained with


def test_grey_images_at_the_model_size_train(home):
    """Grey and grey+alpha images whose side equals the model's image size (they crashed inside torch)."""
    (home / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        arr = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        mode = ("L", "LA", "P", "1")[i % 4]
        Image.fromarray(arr, "L").convert(mode).save(home / "imgs" / f"g{i:02d}.png")
    assert mmjepa(home, "shards", "folder", "imgs", "shards", "--quiet").returncode == 0
    raw = yaml.safe_load((RECIPES / "image" / "digits_ijepa_cpu.yaml").read_text())
    raw["data"]["sources"] = [{"type": "shards", "urls": "shards"}]
    (home / "grey.yaml").write_text(yaml.safe_dump(raw))
    r = mmjepa(home, "train", "grey.yaml", "train.max_steps=2", "model.modalities.image.num_channels=3",
               "model.modalities.image.image_mean=[0.5,0.5,0.5]", "model.modalities.image.image_std=[0.5,0.5,0.5]",
               *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trained 2 steps" in r.stdout and "0 bad samples skipped" in r.stdout


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "ctrl-c-in-a-terminal", "sigterm"])
def test_a_stop_signal_saves_and_prints_one_line(home, sig, group):
    """Ctrl-C (to the trainer, or to its whole process group with its data workers, as a terminal
    sends it) or SIGTERM: the step finishes, the state at that step is saved, one line says so."""
    recipe = str(RECIPES / "image" / "digits_ijepa_cpu.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["train", recipe, "train.max_steps=100000", "train.save_every=3", "data.num_workers=2",
            *[a for a in TINY if not a.startswith("data.num_workers")]]
    proc = subprocess.Popen([*CMD, *args], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    ckpts = home / "runs" / "digits_ijepa_cpu" / "checkpoints"
    t0 = time.time()
    while not (ckpts.is_dir() and list(ckpts.glob("step_*"))) and time.time() - t0 < 180:
        time.sleep(0.2)
    time.sleep(0.3)  # land somewhere inside a later step
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("mmjepa train: stopped at step ") and "last checkpoint: step " in last
    assert last.endswith("run the same command to resume")
    stopped = int(last.split("stopped at step ")[1].split(";")[0])
    saved = int(last.split("last checkpoint: step ")[1].split(" ")[0])
    assert saved == stopped and (ckpts / f"step_{stopped:08d}").is_dir()  # nothing done is lost
