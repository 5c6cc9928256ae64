"""The checkpoint manager: atomic saves with rotation, the resume point, and the export.

Layout of a run's ``output_dir``::

    recipe.yaml                      the resolved recipe of the latest start
    checkpoints/step_00000200/       accelerate's save_state (model with EMA targets, optimizer,
                                     RNG states) + trainer_state_<rank>.json (step, data position)
                                     + recipe.yaml
    export/                          save_pretrained (config.json, model.safetensors) + recipe.yaml
                                     + training_state.json

A checkpoint is written into ``checkpoints/.tmp_step_N`` and renamed into place once complete, so a
kill during a save leaves the previous checkpoints intact; leftovers are removed at the next start.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

CKPT_PREFIX = "step_"
# write errors that mean "no room": the half-written checkpoint is removed and the run stops in one line
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# how writers that are not Python file objects report a full disk: safetensors ("os error 28"),
# torch.save's stream writer ("file write failed"), and the messages of the errnos above
_NO_SPACE_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "File too large",
                  "file write failed")


def no_space(err: BaseException) -> int | None:
    """The errno of a write that failed for want of space (ENOSPC, EDQUOT, EFBIG), else None.
    Writers in Rust or C++ (safetensors, torch.save) raise their own errors with the reason in words."""
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return err.errno
    text = str(err)
    if any(t in text for t in _NO_SPACE_TEXT):
        return errno.EDQUOT if "quota" in text else errno.EFBIG if "too large" in text else errno.ENOSPC
    return None


class CheckpointError(OSError):
    """A checkpoint could not be written (the disk is full ...); the previous one is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir/checkpoints``, oldest first (temporary folders ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    n = len(CKPT_PREFIX)
    ckpts = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[n:].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name[n:]))


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CKPT_PREFIX):])


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place (rename; an existing ``final`` is swapped out first)."""
    if final.exists():
        old = final.with_name(f".old_{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def fsync_dir(path: Path) -> None:
    """Flush every file of a folder (and the folder) to disk before it is renamed into place."""
    for p in [*path.rglob("*"), path]:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


class CheckpointManager:
    """Saves, finds and loads the checkpoints of one run, on every process of it.

    ``accelerator`` (an ``accelerate.Accelerator``) does the sharded state I/O; this class owns the
    folders: temporary names, the rename, rotation (``keep`` newest), the resume point, the export.
    """

    def __init__(self, accelerator: Any, output_dir: str | os.PathLike, keep: int = 2):
        self.acc = accelerator
        self.out = Path(output_dir)
        self.root = self.out / "checkpoints"
        self.keep = keep

    # ------------------------------------------------------------------ finding
    def list(self) -> list[Path]:
        return list_checkpoints(self.out)

    def latest(self) -> Path | None:
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    def resume_path(self, resume: str) -> Path | None:
        """``auto``: the newest checkpoint (or None); ``never``: None; else that folder."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"train.resume: no checkpoint folder {path}")
        return path

    def saved_recipe(self, ckpt: Path | None = None) -> dict[str, Any] | None:
        """The resolved recipe a checkpoint (default: the newest) was written with, if any."""
        ckpt = ckpt or self.latest()
        if ckpt is None or not (ckpt / "recipe.yaml").exists():
            return None
        return yaml.safe_load((ckpt / "recipe.yaml").read_text())

    @staticmethod
    def trainer_state(ckpt: Path, rank: int = 0) -> dict[str, Any]:
        """The trainer state (step, samples seen, data position) that process ``rank`` saved."""
        state_file = ckpt / f"trainer_state_{rank}.json"
        if not state_file.exists():
            raise ValueError(f"{ckpt} has no {state_file.name}: it was written by fewer processes than this run has")
        return json.loads(state_file.read_text())

    # ------------------------------------------------------------------ writing
    def clean_stale(self) -> None:
        """Remove the temporary folders of saves that were killed half-way (main process)."""
        if self.acc.is_main_process and self.root.is_dir():
            for stale in self.root.glob(".tmp_*"):
                shutil.rmtree(stale, ignore_errors=True)

    def save(self, step: int, state: dict[str, Any], recipe_file: Path) -> Path:
        """accelerate's save_state into ``.tmp_step_N`` (every process) plus each process's trainer
        ``state``, then the rename into ``step_N`` and rotation (main process). Returns the folder."""
        acc = self.acc
        final = self.root / f"{CKPT_PREFIX}{step:08d}"
        tmp = self.root / f".tmp_{final.name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            (tmp / f"trainer_state_{acc.process_index}.json").write_text(json.dumps(state))
            acc.wait_for_everyone()
            if acc.is_main_process:
                shutil.copy(recipe_file, tmp / "recipe.yaml")
                fsync_dir(tmp)
        except Exception as err:  # noqa: BLE001 - a full disk is reported in one line; the rest is re-raised
            code = no_space(err) or self._out_of_space()
            if code is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
            prev = self.latest()
            kept = f"the previous checkpoint {prev} is intact" if prev is not None else "there is no earlier checkpoint"
            raise CheckpointError(code, f"could not write the checkpoint of step {step} into {self.root}: "
                                  f"{os.strerror(code)}; {kept}. Free some space (or set "
                                  "train.output_dir elsewhere) and run the same command to resume") from None
        if acc.is_main_process:
            atomic_replace_dir(tmp, final)
            for old in self.list()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _out_of_space(self) -> int | None:
        """ENOSPC when the disk under the run has less room left than a checkpoint takes (the
        previous one's size, or 64 MiB before the first): a write that failed with a message that
        does not say why (torch.save's "unexpected pos ...") most likely ran out of space."""
        prev = self.latest()
        needed = sum(f.stat().st_size for f in prev.rglob("*") if f.is_file()) if prev is not None else 64 << 20
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            return None
        return errno.ENOSPC if free < needed else None

    def load(self, ckpt: Path) -> dict[str, Any]:
        """Restore accelerate's state from ``ckpt``; returns this process's trainer state."""
        state = self.trainer_state(ckpt, self.acc.process_index)
        self.acc.load_state(str(ckpt))
        return state

    def export(self, model: Any, save: Callable[[Path, dict], None], recipe_file: Path,
               info: dict[str, Any]) -> Path:
        """``save(folder, state_dict)`` (the model's save_pretrained) into ``output_dir/export``,
        written aside and renamed; the recipe and ``info`` (as training_state.json) go with it."""
        acc = self.acc
        dest = self.out / "export"
        state_dict = acc.get_state_dict(model)  # gathers FSDP/DeepSpeed shards
        if acc.is_main_process:
            tmp = self.out / ".tmp_export"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                shutil.copy(recipe_file, tmp / "recipe.yaml")  # first: the model card describes the training
                (tmp / "training_state.json").write_text(json.dumps(info))
                save(tmp, state_dict)
            except Exception as err:  # noqa: BLE001 - as in save(): a full disk in one line
                code = no_space(err) or self._out_of_space()
                if code is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                prev = self.latest()
                kept = f"the last checkpoint {prev} is intact" if prev is not None else "there is no checkpoint"
                raise CheckpointError(code, f"could not write the export into {dest}: {os.strerror(code)}; {kept}. "
                                      "Free some space and run the same command to write it") from None
            atomic_replace_dir(tmp, dest)
        acc.wait_for_everyone()
        return dest
