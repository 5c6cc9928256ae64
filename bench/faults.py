"""``mmjepa bench faults --json PATH [--trials N] [--quick]``: the fault-injection suite.

Each case injects one kind of fault into small real training runs (the scikit-learn digits, a
2-layer image model, one process unless said) and counts what survived:

- ``kill``: ``kill -9`` of the trainer process at random moments (seeded), some of them landing
  inside a checkpoint write; then the same command resumes to the end. Survived = the latest
  complete checkpoint loads, the resumed run finishes and its final weights equal, bit for bit,
  those of a run that was never interrupted.
- ``corrupt``: shards mixing good digit images with truncated, bit-flipped and empty PNGs, a
  20000x20000 PNG (decompression bomb), a sample with no modality, a truncated tar and a shard
  deleted while training; survived = the run finishes, the reported skipped count equals the
  number of corrupt items injected exactly, and peak memory stays bounded. A shard missing at the
  start is refused in one line before anything is written.
- ``corrupt_multimodal``: shards of image + audio + text samples with corrupt audio (header cut,
  bit-flipped, empty, NaN samples) and text (invalid UTF-8, empty, blank) fields, for a tri-modal
  model that requires every modality; survived = exactly those samples skipped and counted, every
  good one trained on once.
- ``nonfinite``: NaN and Inf losses injected at chosen steps; survived = each is skipped and
  counted and the weights stay finite; ``train.max_bad_steps`` consecutive ones stop the run with
  one line and a checkpoint that loads.
- ``disk_full``: the checkpoint writer hits ENOSPC half-way through a save — simulated (a write
  that raises ``OSError(ENOSPC)``) and, where a tmpfs can be mounted (root), for real: the run's
  folder on a tmpfs with room for one and a half checkpoints; survived = a one-line error, the
  half-written folder removed, the previous checkpoint intact and resumable.
- ``rank_death``: a 2-process gloo run (``accelerate launch``) whose rank 1 is SIGKILLed; survived
  = the other exits with an error within ``train.ddp_timeout`` and the last checkpoint loads.
- ``bad_inputs``: :func:`mmjepa.bench.bad_inputs.run_bad_inputs`: generated bad inputs on every
  public entry point; survived = a result or a clear one-line error.

The JSON's top level: ``trials``, ``survived``, ``samples_lost``, ``checkpoints_lost``,
``bad_inputs_tried``, ``crashes`` (sums over the cases), then ``cases`` with each one's details.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

from mmjepa.bench.bad_inputs import run_bad_inputs

REPO = Path(__file__).resolve().parent.parent

IMAGE = {"image_size": 32, "patch_size": 4, "num_channels": 1, "image_mean": [0.5], "image_std": [0.5],
         "min_keep": 2}


def tiny_recipe(out: str | Path, sources: list[dict] | None = None, **sections) -> dict:
    """A 2-layer, 32-wide image model on 32x32 digits, batch 8, one process, no data workers
    (bit-exact resume), no tracker."""
    recipe = {
        "model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1, "predictor_num_attention_heads": 2,
                  "modalities": {"image": dict(IMAGE)}},
        "data": {"sources": sources or [{"type": "builtin", "name": "digits"}], "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "clip_grad": 1.0},
        "train": {"max_steps": 8, "log_every": 2, "tracker": "none", "progress": False, "output_dir": str(out)},
    }
    for sec, values in sections.items():
        recipe[sec] = {**recipe[sec], **values}
    return recipe


def _case(trials: int = 0, survived: int = 0, **extra) -> dict[str, Any]:
    return {"trials": trials, "survived": survived, "samples_lost": 0, "checkpoints_lost": 0, "crashes": 0,
            "bad_inputs_tried": 0, **extra}


def checkpoint_loads(ckpt: Path | None) -> bool:
    """Whether a checkpoint folder is complete and readable: its trainer state, model weights and
    optimizer state load."""
    if ckpt is None:
        return False
    try:
        import torch
        from safetensors.torch import load_file

        json.loads((ckpt / "trainer_state_0.json").read_text())
        weights = sorted(ckpt.glob("model*.safetensors")) or sorted(ckpt.glob("pytorch_model*.bin"))
        if not weights:
            return False
        for w in weights:
            load_file(w) if w.suffix == ".safetensors" else torch.load(w, weights_only=True)
        for opt in ckpt.glob("optimizer*.bin"):
            torch.load(opt, weights_only=False)
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is a lost checkpoint
        return False


def _export_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "export" / "model.safetensors")


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- kill -9
CHILD = textwrap.dedent('''
    """The trainer with fault hooks: FAULT_MARKER (a file touched after the first step) and
    FAULT_DIE_IN_SAVE=N:MODE (SIGKILL itself inside the N-th checkpoint write)."""
    import os, signal, sys
    from accelerate import Accelerator

    spec = os.environ.get("FAULT_DIE_IN_SAVE")
    if spec:
        n, mode = int(spec.split(":")[0]), spec.split(":")[1]
        real = Accelerator.save_state
        calls = [0]

        def save_state(self, output_dir=None, **kw):
            calls[0] += 1
            if calls[0] == n:
                if mode == "before":  # the temporary folder exists, nothing in it yet
                    os.kill(os.getpid(), signal.SIGKILL)
                real(self, output_dir, **kw)
                if mode == "half":  # a weights file half written
                    p = os.path.join(output_dir, "model.safetensors")
                    data = open(p, "rb").read()
                    open(p, "wb").write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)  # "after": written, not yet renamed into place
            return real(self, output_dir, **kw)

        Accelerator.save_state = save_state
    marker = os.environ.get("FAULT_MARKER")
    if marker:
        import mmjepa.engine.trainer as T
        real_step = T.Trainer.train_step

        def train_step(self, *a, **kw):
            r = real_step(self, *a, **kw)
            if self.step == 1:
                open(marker, "w").close()
            return r

        T.Trainer.train_step = train_step
    import mmjepa_cli
    sys.exit(mmjepa_cli.main(sys.argv[1:]))
''')


def _child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for k in ("FAULT_MARKER", "FAULT_DIE_IN_SAVE"):
        env.pop(k, None)
    env.update(extra)
    return env


def _train_cmd(work: Path, recipe_file: Path) -> list[str]:
    return [sys.executable, str(work / "child.py"), "train", str(recipe_file)]


def kill_trials(work: Path, trials: int = 10, seed: int = 0, steps: int = 40, save_every: int = 3) -> dict[str, Any]:
    """``trials`` runs killed with SIGKILL, then resumed to the end and compared with an
    uninterrupted run. Every third trial (the first one included) dies inside a checkpoint write (before anything is
    written, after the weights are written, or with a weights file half written); the others at a
    random moment of training, timed from the end of the first step."""
    import yaml

    from mmjepa.engine import list_checkpoints

    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    (work / "child.py").write_text(CHILD)

    def recipe_for(name: str) -> Path:
        f = work / f"{name}.yaml"
        f.write_text(yaml.safe_dump(tiny_recipe(work / name, train={"max_steps": steps, "save_every": save_every})))
        return f

    ref_file = recipe_for("reference")
    marker = work / "reference.started"
    t0 = time.perf_counter()
    proc = subprocess.run(_train_cmd(work, ref_file), env=_child_env(FAULT_MARKER=str(marker)), cwd=work,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted reference run failed:\n{proc.stderr[-3000:]}")
    final = work / "reference" / "checkpoints" / f"step_{steps:08d}"
    train_s = max(final.stat().st_mtime - marker.stat().st_mtime, 0.2)  # first step -> final checkpoint
    reference = _export_weights(work / "reference")
    saves = steps // save_every
    out = _case(reference_s=round(time.perf_counter() - t0, 1), training_window_s=round(train_s, 2), details=[])
    for i in range(trials):
        name = f"trial{i:02d}"
        f = recipe_for(name)
        trial: dict[str, Any] = {"trial": i}
        if i % 3 == 0:  # inside a checkpoint write
            n, mode = rng.randint(1, saves - 1), rng.choice(["before", "after", "half"])
            trial["kill"] = f"in save {n} ({mode})"
            first = subprocess.run(_train_cmd(work, f), env=_child_env(FAULT_DIE_IN_SAVE=f"{n}:{mode}"), cwd=work,
                                   capture_output=True, text=True, timeout=600)
            killed = first.returncode == -signal.SIGKILL
        else:  # at a random moment after the first step
            delay = rng.uniform(0.0, train_s)
            trial["kill"] = f"{delay:.2f} s after the first step"
            m = work / f"{name}.started"
            p = subprocess.Popen(_train_cmd(work, f), env=_child_env(FAULT_MARKER=str(m)), cwd=work,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while not m.exists() and p.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
            killed = p.poll() is None
            if killed:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
        ckpts = list_checkpoints(work / name)
        latest = ckpts[-1] if ckpts else None
        trial.update(killed=killed, latest=latest.name if latest else None,
                     leftovers=sorted(x.name for x in (work / name / "checkpoints").glob(".tmp_*"))
                     if (work / name / "checkpoints").is_dir() else [])
        lost = latest is not None and not checkpoint_loads(latest)
        second = subprocess.run(_train_cmd(work, f), env=_child_env(), cwd=work, capture_output=True, text=True,
                                timeout=600)
        resumed = second.returncode == 0
        try:
            equal = resumed and _same_weights(reference, _export_weights(work / name))
        except Exception as err:  # noqa: BLE001 - no final export: not survived
            equal, trial["export_error"] = False, f"{type(err).__name__}: {err}"
        trial.update(resumed=resumed, weights_equal=equal, latest_loads=not lost if latest else None,
                     resumed_from=next((ln.split("resumed from ")[1].split(" at ")[0].rsplit("/", 1)[-1]
                                        for ln in second.stdout.splitlines() + second.stderr.splitlines()
                                        if "resumed from" in ln), None))
        if not resumed:
            trial["error"] = second.stderr[-1500:]
        out["trials"] += 1
        out["survived"] += int(resumed and equal and not lost)
        out["checkpoints_lost"] += int(lost)
        out["crashes"] += int(not resumed)
        out["details"].append(trial)
        shutil.rmtree(work / name, ignore_errors=True)
    out["killed"] = sum(d["killed"] for d in out["details"])
    out["killed_in_save"] = sum(d["killed"] for d in out["details"] if d["kill"].startswith("in save"))
    return out


# ---------------------------------------------------------------------------------------------- corrupt data
def _png(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20000) -> bytes:
    """A small file that claims a side x side grey image (20000 x 20000 = 400 M pixels)."""
    import struct

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (side + 1) * 64, 9)  # the first 64 rows; the rest never comes
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def corruptions(good: bytes) -> dict[str, dict[str, bytes]]:
    """The corrupt samples injected (name -> the sample's fields besides its key)."""
    flipped = bytearray(good)
    flipped[16] ^= 0xFF  # a bit-flipped IHDR (width): the chunk's CRC no longer matches
    return {
        "truncated_png": {"png": good[: len(good) // 2], "cls": b"1"},
        "bitflipped_png": {"png": bytes(flipped), "cls": b"1"},
        "empty_png": {"png": b"", "cls": b"1"},
        "bomb_png_20000x20000": {"png": bomb_png(), "cls": b"1"},
        "garbage_png": {"png": bytes((i * 37 + 11) % 256 for i in range(300)), "cls": b"1"},
        "no_modality": {"cls": b"1", "json": b'{"note": "no image, audio or text"}'},
    }


def corrupt_shards(work: Path, seed: int = 0, per_shard: int = 24) -> dict[str, Any]:
    """Shards of digit PNGs with corrupt samples, a truncated tar and a shard deleted mid-run; a
    training run over exactly the good samples. Returns the counts."""
    import numpy as np

    from mmjepa.datasets import digits
    from mmjepa.engine import load_recipe, train
    from mmjepa.shards import write_shards

    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = digits("all")
    bad_kinds = corruptions(_png(np.asarray(items[0]["image"])))
    # 4 shards: 0 and 1 hold the corrupt samples among good ones, 2 is cut half-way through a
    # member, 3 is deleted after training started
    shard_dir = work / "shards"
    shutil.rmtree(shard_dir, ignore_errors=True)
    samples_of: list[list[dict]] = [[] for _ in range(4)]
    idx = 0
    for s in range(4):
        for _ in range(per_shard):
            it = items[idx]
            samples_of[s].append({"__key__": f"s{s}_{idx:05d}", "png": _png(np.asarray(it["image"])),
                                  "cls": str(it["label"]).encode()})
            idx += 1
    injected = []
    for n, (kind, fields) in enumerate(bad_kinds.items()):
        s = n % 2
        pos = rng.randint(0, len(samples_of[s]) - 2)  # never last: the run ends on a good sample
        samples_of[s].insert(pos, {"__key__": f"bad_{kind}", **fields})
        injected.append(kind)
    urls = []
    for s in range(4):
        write_shards(samples_of[s], shard_dir / f"part{s}", prefix=f"p{s}", max_count=10_000, progress=False)
        urls.append(str(next((shard_dir / f"part{s}").glob("*.tar"))))
    # the truncated tar (shard 2): cut inside the first member of its sample 8; samples 0..7 are read
    with tarfile.open(urls[2]) as tf:
        members = tf.getmembers()
    keys_in_order: list[str] = []
    for m in members:
        k = m.name.split(".")[0]
        if k not in keys_in_order:
            keys_in_order.append(k)
    good_in_truncated = 8
    first = next(m for m in members if m.name.split(".")[0] == keys_in_order[good_in_truncated])
    data = Path(urls[2]).read_bytes()
    Path(urls[2]).write_bytes(data[: first.offset_data + max(first.size // 2, 1)])
    # read order = url order (shuffle off, one process, no workers): every fault comes before the
    # last good sample, which ends the last batch, so each one is reached exactly once
    order = [urls[0], urls[2], urls[3], urls[1]]
    batch = 8
    good = len(samples_of[0]) + len(samples_of[1]) - len(injected) + good_in_truncated
    assert good % batch == 0, good
    steps = good // batch
    # + the truncated tar: the sample cut in two (a partial sample, skipped) and the unreadable rest
    # of the file (one error); + the deleted shard (one error)
    expected_skipped = len(injected) + 2 + 1
    recipe = tiny_recipe(work / "run", sources=[{"type": "shards", "urls": order}],
                         data={"shuffle": False, "error_window": 1000, "max_error_rate": 0.5},
                         train={"max_steps": steps, "save_every": 0})
    deleted = {"done": False}

    def delete_shard(step: int, logs) -> None:
        if step == 1 and not deleted["done"]:
            os.remove(urls[3])
            deleted["done"] = True

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = _case(trials=1, injected=injected + ["truncated_tar", "shard_deleted_mid_run"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(load_recipe(recipe), callbacks=[delete_shard])
    except Exception as err:  # noqa: BLE001 - reported as a crash
        out.update(crashes=1, error=f"{type(err).__name__}: {err}")
        return out
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(steps=result.steps, expected_skipped=expected_skipped, reported_skipped=result.skipped_samples,
               good_samples_planned=steps * batch, samples_trained=result.samples_seen,
               peak_rss_mb=round(rss1), peak_rss_growth_mb=round(rss1 - rss0))
    out["bad_inputs_tried"] = len(out["injected"])
    bounded = rss1 - rss0 < 500  # the bomb alone would be 400 MB grey (1.2 GB as RGB)
    exact = result.skipped_samples == expected_skipped
    out["samples_lost"] = max(0, steps * batch - result.samples_seen)
    out["survived"] = int(exact and bounded and result.steps == steps)
    out["memory_bounded"] = bounded
    out["count_exact"] = exact
    # a shard missing at the start: refused in one line before anything is written
    missing = tiny_recipe(work / "missing",
                          sources=[{"type": "shards", "urls": [urls[0], str(shard_dir / "nope.tar")]}])
    try:
        train(load_recipe(missing))
        out["missing_shard_at_start"] = "not refused"
    except ValueError as err:
        out["missing_shard_at_start"] = str(err)
        out["trials"] += 1
        out["survived"] += int("no such shard file" in str(err) and not (work / "missing").exists())
    return out


DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def _wav(wave, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="WAV", subtype=subtype)
    return buf.getvalue()


def multimodal_corruptions(good_wav: bytes, nan_wav: bytes) -> dict[str, dict[str, bytes]]:
    """Corrupt audio and text fields, each in a sample whose other fields are good."""
    flipped = bytearray(good_wav)
    flipped[0] ^= 0xFF  # "RIFF" no longer
    return {
        "header_cut_wav": {"wav": good_wav[:20]},
        "bitflipped_wav": {"wav": bytes(flipped)},
        "empty_wav": {"wav": b""},
        "nan_wav": {"wav": nan_wav},
        "invalid_utf8_txt": {"txt": b"the number \xff\xfe\xfa"},
        "empty_txt": {"txt": b""},
        "blank_txt": {"txt": b"  \n\t "},
    }


def corrupt_multimodal_shards(work: Path, seed: int = 0) -> dict[str, Any]:
    """Shards of image + audio + text samples (digit images, tones, captions) with corrupt audio and
    text fields mixed in, for a tri-modal model that requires every modality: each such sample is
    skipped and counted, every good one trained on once."""
    import numpy as np

    from mmjepa.datasets import digits
    from mmjepa.engine import load_recipe, train
    from mmjepa.shards import write_shards
    from mmjepa.tokenizer import train_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions = [f"the number {w}" for w in DIGIT_WORDS]
    train_tokenizer(texts=captions * 20, vocab_size=60).save_pretrained(work / "tokenizer")
    t = np.arange(8000) / 16000
    tone = lambda label: (0.3 * np.sin(2 * np.pi * (200 + 60 * label) * t)).astype(np.float32)  # noqa: E731
    nan_wave = tone(1)
    nan_wave[100:200] = np.nan
    items = digits("all")
    samples = [{"__key__": f"g{i:05d}", "png": _png(np.asarray(it["image"])), "wav": _wav(tone(it["label"])),
                "txt": captions[it["label"]].encode(), "cls": str(it["label"]).encode()}
               for i, it in enumerate(items[:48])]
    injected = []
    for kind, fields in multimodal_corruptions(_wav(tone(3)), _wav(nan_wave, "FLOAT")).items():
        good = dict(samples[rng.randrange(len(samples))])
        pos = rng.randint(0, len(samples) - 2)  # never last: the run ends on a good sample
        samples.insert(pos, {**good, "__key__": f"bad_{kind}", **fields})
        injected.append(kind)
    shard_dir = work / "shards"
    shutil.rmtree(shard_dir, ignore_errors=True)
    write_shards(samples, shard_dir, prefix="mm", max_count=20, progress=False)
    modalities = {"image": dict(IMAGE),
                  "audio": {"num_mel_bins": 32, "max_frames": 64, "patch_size": 16},
                  "text": {"vocab_size": 60, "max_length": 12, "tokenizer": str(work / "tokenizer")}}
    steps, batch = 48 // 8, 8
    recipe = tiny_recipe(work / "run", sources=[{"type": "shards", "urls": str(shard_dir)}],
                         model={"modalities": modalities},
                         data={"shuffle": False, "error_window": 1000, "max_error_rate": 0.5},
                         train={"max_steps": steps, "save_every": 0})
    out = _case(trials=1, injected=injected)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(load_recipe(recipe))
    except Exception as err:  # noqa: BLE001 - reported as a crash
        out.update(crashes=1, error=f"{type(err).__name__}: {err}")
        return out
    exact = result.skipped_samples == len(injected)
    out.update(steps=result.steps, expected_skipped=len(injected), reported_skipped=result.skipped_samples,
               samples_trained=result.samples_seen, count_exact=exact, bad_inputs_tried=len(injected))
    out["samples_lost"] = max(0, steps * batch - result.samples_seen)
    out["survived"] = int(exact and result.steps == steps and result.samples_seen == steps * batch)
    return out


# ---------------------------------------------------------------------------------------------- NaN / Inf
@contextlib.contextmanager
def poisoned_loss(calls: Callable[[int], float | None]):
    """Multiply the training loss of forward call ``i`` (1-based, grad-enabled calls in training
    mode) by ``calls(i)`` when that is not None (``float('nan')``, ``float('inf')``)."""
    from mmjepa import MMJepaModel

    real = MMJepaModel.forward
    n = {"i": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.training and out.loss is not None and out.loss.requires_grad:
            n["i"] += 1
            factor = calls(n["i"])
            if factor is not None:
                out.loss = out.loss * factor
        return out

    MMJepaModel.forward = forward
    try:
        yield n
    finally:
        MMJepaModel.forward = real


def nonfinite_steps(work: Path) -> dict[str, Any]:
    """NaN and Inf losses at chosen steps: skipped and counted, weights finite; then NaN on every
    step from step 4: the run stops after train.max_bad_steps with a loadable checkpoint."""
    import torch

    from mmjepa.engine import NonFiniteError, list_checkpoints, load_recipe, train

    out = _case(details=[])
    bad = {3: float("nan"), 5: float("inf"), 6: float("nan")}
    with poisoned_loss(lambda i: bad.get(i)):
        r = train(load_recipe(tiny_recipe(work / "skips", train={"max_steps": 10})))
    finite = all(torch.isfinite(v).all() for v in r.model.state_dict().values() if v.is_floating_point())
    ok = r.skipped_steps == len(bad) and finite and r.steps == 10
    out["details"].append({"injected": len(bad), "skipped_steps": r.skipped_steps, "weights_finite": bool(finite)})
    out["trials"] += 1
    out["survived"] += int(ok)
    with poisoned_loss(lambda i: float("nan") if i >= 4 else None):
        try:
            train(load_recipe(tiny_recipe(work / "stops", train={"max_steps": 20, "max_bad_steps": 3})))
            msg, stopped = "did not stop", False
        except NonFiniteError as err:
            msg, stopped = str(err), True
    ckpts = list_checkpoints(work / "stops")
    loads = bool(ckpts) and checkpoint_loads(ckpts[-1])
    out["details"].append({"injected": "NaN from step 4", "stopped": stopped, "message": msg,
                           "checkpoint": ckpts[-1].name if ckpts else None, "checkpoint_loads": loads})
    out["trials"] += 1
    out["survived"] += int(stopped and loads and "\n" not in msg)
    out["checkpoints_lost"] += int(not loads)
    return out


# ---------------------------------------------------------------------------------------------- disk full
def disk_full(work: Path) -> dict[str, Any]:
    """The second checkpoint write fails with ENOSPC half-way (after the weights file is partly
    written); the run stops with one line, the previous checkpoint loads and the run resumes."""
    from accelerate import Accelerator

    from mmjepa.engine import load_recipe, train

    real = Accelerator.save_state
    calls = {"n": 0}

    def full_disk(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:
                f.write(b"\0" * 1024)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "model.safetensors"))
        return real(self, output_dir, **kw)

    recipe = tiny_recipe(work / "run", train={"max_steps": 8, "save_every": 2})
    out = _case(trials=1, simulation="OSError(ENOSPC) raised by the checkpoint writer after 1 KiB")
    Accelerator.save_state = full_disk
    try:
        msg, clear = _train_until_the_disk_is_full(recipe)
    finally:
        Accelerator.save_state = real
    loads, leftovers = _after_a_full_disk(work / "run")
    return _full_disk_verdict(out, msg, clear, loads, leftovers, train(load_recipe(recipe)))


def _train_until_the_disk_is_full(recipe: dict) -> tuple[str, bool]:
    """Train; returns the error shown and whether it is the one line a full disk should give."""
    from mmjepa.engine import load_recipe, train
    from mmjepa.engine.checkpoint import CheckpointError

    try:
        train(load_recipe(recipe))
        return "no error", False
    except CheckpointError as err:
        msg = str(err)
        return msg, "\n" not in msg and "No space left on device" in msg and "intact" in msg
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}", False


def _after_a_full_disk(run: Path) -> tuple[bool, int]:
    """Whether the checkpoint before the failed one (step 2) is the latest and loads; half-written
    folders left."""
    from mmjepa.engine import list_checkpoints

    ckpts = list_checkpoints(run)
    leftovers = len(list((run / "checkpoints").glob(".tmp_*")))
    return [c.name for c in ckpts] == ["step_00000002"] and checkpoint_loads(ckpts[-1]), leftovers


def _full_disk_verdict(out: dict, msg: str, clear: bool, loads: bool, leftovers: int, resumed: Any) -> dict:
    out.update(message=msg, one_line_error=clear, previous_checkpoint_loads=loads, leftovers=leftovers,
               resumed_from=resumed.resumed_from.name if resumed.resumed_from else None, resumed_steps=resumed.steps)
    out["checkpoints_lost"] = int(not loads)
    out["survived"] = int(clear and loads and not leftovers and resumed.steps == 8
                          and resumed.resumed_from is not None and resumed.resumed_from.name == "step_00000002")
    return out


def _mount_tmpfs(where: Path, size_kib: int) -> bool:
    """Mount a tmpfs of ``size_kib`` KiB at ``where`` (needs root, or a container that allows it)."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    return r.returncode == 0


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def disk_full_real(work: Path) -> dict[str, Any] | None:
    """A real full disk: the run's output folder on a tmpfs with room for its recipe and one and a
    half checkpoints, so that the second checkpoint write fails with ENOSPC from the kernel. None
    where no tmpfs can be mounted (not root). Survived = a one-line error, the previous checkpoint
    intact and loadable, no half-written folder left; the run, moved to a disk with room, resumes."""
    from mmjepa.engine import list_checkpoints, load_recipe, train

    # the size of one checkpoint of this model, measured on an ordinary disk
    probe = tiny_recipe(work / "probe", train={"max_steps": 2, "save_every": 2, "export_every": 0})
    train(load_recipe(probe))
    ckpt_bytes = _folder_bytes(list_checkpoints(work / "probe")[-1])
    other_bytes = sum(_folder_bytes(f) if f.is_dir() else f.stat().st_size for f in (work / "probe").iterdir()
                      if f.name not in ("checkpoints", "export"))
    mount = work / "small_disk"
    if not _mount_tmpfs(mount, (other_bytes + int(1.5 * ckpt_bytes)) // 1024 + 64):
        return None
    out = _case(trials=1, simulation=None, disk_kib=(other_bytes + int(1.5 * ckpt_bytes)) // 1024 + 64,
                checkpoint_kib=ckpt_bytes // 1024)
    try:
        msg, clear = _train_until_the_disk_is_full(tiny_recipe(mount / "run", train={"max_steps": 8, "save_every": 2}))
        loads, leftovers = _after_a_full_disk(mount / "run")
        moved = work / "roomy" / "run"
        shutil.copytree(mount / "run", moved)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    resumed = train(load_recipe(tiny_recipe(moved, train={"max_steps": 8, "save_every": 2})))
    return _full_disk_verdict(out, msg, clear, loads, leftovers, resumed)


def disk_full_cases(work: Path) -> dict[str, Any]:
    """The simulated full disk, and a real one (a small tmpfs) where the machine allows mounting."""
    sim = disk_full(work / "simulated")
    real = disk_full_real(work / "real")
    if real is None:
        return {**sim, "real_disk": "not run: no tmpfs could be mounted (needs root)"}
    out = _case(trials=sim["trials"] + real["trials"], survived=sim["survived"] + real["survived"],
                simulated=sim, real_disk=real)
    out["checkpoints_lost"] = sim["checkpoints_lost"] + real["checkpoints_lost"]
    return out


# ---------------------------------------------------------------------------------------------- rank death
MP_SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    from mmjepa.engine import load_recipe, train
    recipe, out, die_step, sig = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rank = int(os.environ.get("RANK", 0))
    with open(f"{out}.rank{rank}.pid", "w") as f:  # the harness ends a stopped rank by its pid
        f.write(str(os.getpid()))

    def die(step, logs):
        if rank == 1 and step == die_step:
            os.kill(os.getpid(), getattr(signal, sig))

    train(load_recipe(recipe, [f"train.output_dir={out}"]), callbacks=[die])
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_death(work: Path, timeout: int = 20, sig: str = "SIGKILL") -> dict[str, Any]:
    """2 gloo processes (``accelerate launch``), checkpoints every 3 steps; after step 5 rank 1
    gets ``sig``: SIGKILL (it dies: its peer sees the connection close) or SIGSTOP (it hangs: its
    peer waits ``train.ddp_timeout``). The survivor (rank 0) must stop with a clear error within
    the timeout (+10 s), and the last checkpoint (step 3) must load."""
    import threading

    from mmjepa.engine import list_checkpoints

    work.mkdir(parents=True, exist_ok=True)
    script = work / "mp.py"
    script.write_text(MP_SCRIPT)
    run_dir = work / f"run_{sig.lower()}"
    recipe = tiny_recipe(run_dir, train={"max_steps": 8, "save_every": 3, "ddp_timeout": timeout})
    recipe["data"]["batch_size"] = 4
    env = {**_child_env(), "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           str(script), json.dumps(recipe), str(run_dir), "5", sig]
    out = _case(trials=1, signal=sig, ddp_timeout_s=timeout)
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 240
    survivor = None
    while proc.poll() is None and time.time() < deadline:
        survivor = next(((t, ln) for t, ln in lines if "mmjepa: rank 0: training stopped" in ln), None)
        if survivor is not None and time.time() > survivor[0] + 5:
            break  # the survivor has spoken; a stopped peer would keep the launcher waiting
        time.sleep(0.2)
    if proc.poll() is None:  # tear down what is left (a SIGSTOPped rank)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid_file in work.glob(f"{run_dir.name}.rank*.pid"):  # a stopped rank outlives its launcher
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if str(script) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):  # still ours
                os.kill(pid, signal.SIGKILL)
    reader.join(timeout=5)
    survivor = next(((t, ln) for t, ln in lines if "mmjepa: rank 0: training stopped" in ln), None)
    ckpts = list_checkpoints(run_dir)
    loads = bool(ckpts) and checkpoint_loads(ckpts[-1])
    waited = None if survivor is None or not ckpts else survivor[0] - ckpts[-1].stat().st_mtime
    out.update(survivor_error=survivor[1][:300] if survivor else None,
               seconds_from_last_checkpoint_to_error=None if waited is None else round(waited, 1),
               last_checkpoint=ckpts[-1].name if ckpts else None, checkpoint_loads=loads)
    if survivor is None:
        out["crashes"] = 1
        out["output_tail"] = "\n".join(ln for _, ln in lines[-30:])
    out["checkpoints_lost"] = int(not loads)
    out["survived"] = int(survivor is not None and loads and waited is not None and waited < timeout + 10)
    return out


def rank_deaths(work: Path, timeout: int = 20) -> dict[str, Any]:
    """A killed rank and a hung (SIGSTOPped) one."""
    parts = [rank_death(work, timeout, "SIGKILL"), rank_death(work, timeout, "SIGSTOP")]
    total = {k: sum(p[k] for p in parts) for k in ("trials", "survived", "samples_lost", "checkpoints_lost",
                                                   "crashes", "bad_inputs_tried")}
    return {**total, "details": parts}


# ---------------------------------------------------------------------------------------------- bad inputs
def bad_inputs(n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` generated bad (and some good) inputs on every public entry point (processors, embed,
    span filling, search, the CLI): trials = inputs tried, survived = ok or a clear one-line error."""
    r = run_bad_inputs(n, seed)
    tried = int(r.get("tried", 0))
    crashes = int(r.get("crashes", 0))
    unclear = int(r.get("unclear_errors", 0))
    return _case(trials=tried, survived=tried - crashes - unclear, crashes=crashes, bad_inputs_tried=tried,
                 unclear_errors=unclear)


# ---------------------------------------------------------------------------------------------- the suite
TOTALS = ("trials", "survived", "samples_lost", "checkpoints_lost", "bad_inputs_tried", "crashes")


def run_suite(trials: int = 10, quick: bool = False, seed: int = 0, workdir: str | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    own = workdir is None
    root = Path(workdir or tempfile.mkdtemp(prefix="mmjepa-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Callable[[], dict]] = {
        "nonfinite": lambda: nonfinite_steps(root / "nonfinite"),
        "disk_full": lambda: disk_full_cases(root / "disk_full"),
        "corrupt": lambda: corrupt_shards(root / "corrupt", seed=seed),
        "corrupt_multimodal": lambda: corrupt_multimodal_shards(root / "corrupt_multimodal", seed=seed),
        "kill": lambda: kill_trials(root / "kill", trials=1 if quick else trials, seed=seed),
    }
    if not quick:
        cases["rank_death"] = lambda: rank_deaths(root / "rank_death")
    cases["bad_inputs"] = lambda: bad_inputs(20 if quick else 2000, seed)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        for name, fn in cases.items():
            t = time.perf_counter()
            try:
                res = fn()
            except Exception as err:  # noqa: BLE001 - a case that breaks is a crash, reported
                res = _case(trials=1, crashes=1, error=f"{type(err).__name__}: {err}")
            res["seconds"] = round(time.perf_counter() - t, 1)
            results[name] = res
            log(f"faults: {name}: {res['survived']}/{res['trials']} survived, {res['crashes']} crashes, "
                f"{res['checkpoints_lost']} checkpoints lost, {res['samples_lost']} samples lost ({res['seconds']} s)")
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    summary = {k: sum(int(r.get(k, 0)) for r in results.values()) for k in TOTALS}
    summary.update(seconds=round(time.perf_counter() - t0, 1), quick=quick, seed=seed, cases=results)
    return summary


def run(args: argparse.Namespace) -> int:
    summary = run_suite(trials=args.trials, quick=args.quick, seed=args.seed, workdir=args.workdir)
    summary["command"] = "mmjepa " + " ".join(getattr(args, "argv", []))
    summary["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    summary["cpus"] = os.cpu_count()
    top = {k: summary[k] for k in (*TOTALS, "seconds")}
    print(json.dumps(top))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0 if summary["survived"] == summary["trials"] and summary["crashes"] == 0 else 1
