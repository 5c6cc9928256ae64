"""The trainer: a recipe in, a trained ``MMJepaModel`` out, on one CPU or many GPUs/nodes.

    mmjepa train recipes/image/digits_ijepa_cpu.yaml train.max_steps=50 model.hidden_size=64
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m mmjepa train RECIPE.yaml

    from mmjepa.engine import load_recipe, train
    result = train(load_recipe("recipes/image/digits_ijepa_cpu.yaml", ["train.max_steps=50"]))

Set-up is split into ``_setup_accelerator``, ``_setup_data``, ``_setup_model`` and
``_setup_schedule``; everything that can be checked without training (recipe, tokenizer and model
paths, shard files, an ``output_dir`` that holds another model's run) is checked before anything
is written. One training step (:meth:`Trainer.train_step`) has three parts: forward over
``grad_accum`` micro-batches; backward (gradients synchronised on the last), clipping, the
scheduled LR and weight decay, the AdamW step; the EMA update of the target encoders.
Checkpoints, resume and export are the :class:`~mmjepa.engine.checkpoint.CheckpointManager`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import filter_trackers
from accelerate.utils import (DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration, send_to_device,
                               set_seed)
from tqdm.auto import tqdm

from ..data import DataPipeline, DataStream, model_inputs
from ..layers import Transformer
from ..modalities import get_modality
from ..models import MMJepaConfig, MMJepaModel
from ..models.backbone import HFBackboneEncoder, resolve_backbones
from .checkpoint import CheckpointManager, checkpoint_step
from .optim import build_optimizer, cosine, cosine_with_warmup, set_hyperparams
from .recipe import Recipe, load_recipe, save_recipe


class TrainingInterrupted(Exception):
    """The user stopped the run (Ctrl-C); the message says where and how to resume."""


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request that the loop honours between steps.

    A signal that lands mid-step (say while a DataLoader worker hands a batch over) would leave
    half-finished work and tracebacks from the worker; instead the step finishes, the state is
    saved and the run stops. A second Ctrl-C interrupts at once. Handlers are installed only in
    the main thread (Python allows no other) and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self._old.get(signum, signal.default_int_handler))  # a second one is immediate

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    @property
    def requested(self) -> bool:
        """Whether this process was asked to stop (the processes agree in :meth:`Trainer.train_step`)."""
        return self.signum is not None


class CollapseError(RuntimeError):
    """A collapse monitor fell under its floor with ``train.stop_on_collapse``; the state is saved."""


class NonFiniteError(RuntimeError):
    """``train.max_bad_steps`` consecutive steps had a NaN/Inf loss or gradient norm (each one was
    skipped); the state (the last good weights) is saved and the message says where."""


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: Any  # the unwrapped MMJepaModel
    output_dir: Path
    steps: int
    samples_seen: int
    train_samples_per_s: float
    history: list[dict[str, Any]]
    checkpoint: Path | None = None
    export_dir: Path | None = None
    skipped_samples: int = 0
    elapsed_s: float = 0.0
    resumed_from: Path | None = None
    already_finished: bool = False  # the output_dir held a finished run: nothing was trained
    skipped_steps: int = 0  # steps skipped for a NaN/Inf loss or gradient norm


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict -> {"a.b.c": scalar} (lists and other values as strings)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# settings that may change between the runs of one output_dir without a warning
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.resume", "train.save_every", "train.export_every",
                     "train.log_every", "train.progress", "train.keep_checkpoints", "train.tracker",
                     "train.ddp_timeout", "train.output_dir", "train.max_bad_steps", "description"}


def resolve_model_config(config: MMJepaConfig) -> MMJepaConfig:
    """Let each modality plug-in load and check what its options name (a tokenizer ...) and record
    derived options (its vocabulary fingerprint); raises ValueError naming the modality."""
    for name in config.modalities:
        try:
            config.modalities[name].update(get_modality(name).resolve_config(config.modality_config(name)))
        except ValueError as err:
            raise ValueError(f"model.modalities.{name}: {err}") from None
    config.validate_values()
    try:  # Hugging Face backbones: their whole config, checked against the modalities' options
        resolve_backbones(config)
    except ValueError as err:
        raise ValueError(f"model.{err}") from None
    return config


class Trainer:
    """Holds the pieces of one run; :func:`train` is the entry point."""

    def __init__(self, recipe: Recipe, callbacks: Sequence[Callable[[int, dict | None], None]] = ()):
        self.recipe = recipe
        self.callbacks = list(callbacks)
        self.out = Path(recipe.train.output_dir)
        self.accelerator = self._setup_accelerator()
        self.ckpt = CheckpointManager(self.accelerator, self.out, recipe.train.keep_checkpoints)
        self.resume_from = self.ckpt.resume_path(recipe.train.resume)
        if self.resume_from is not None:
            self._check_same_model(self.resume_from)
        self.config = resolve_model_config(recipe.model_config())
        self._setup_data()
        self._setup_model()
        self._setup_schedule()
        self.step = 0
        self.samples_seen = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient norm, in all
        self.bad_in_a_row = 0  # consecutive ones up to now
        self.stop: StopRequest | None = None  # set while run() trains
        self.stop_agreed = False  # some process was asked to stop (agreed in the last train_step)
        self._good_in_window = 0  # logged means are over the good steps of the window
        self._monitors: dict[str, torch.Tensor] = {}  # the collapse monitors of the last logged step

    # ------------------------------------------------------------------ set-up
    def _setup_accelerator(self) -> Accelerator:
        if AcceleratorState._shared_state:  # a previous run in this process: its precision etc. may differ
            AcceleratorState._reset_state()  # (keeps the process group)
        t = self.recipe.train
        log_with = None
        if t.tracker:
            available = filter_trackers([t.tracker], t.output_dir)
            if not available:
                if t.tracker != "tensorboard":
                    raise ValueError(f"train.tracker: {t.tracker!r} is not installed (or not known to accelerate)")
                print("mmjepa: tensorboard is not installed; training without a tracker", file=sys.stderr)
            log_with = available or None
        acc = Accelerator(
            mixed_precision=t.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=t.output_dir, logging_dir=str(Path(t.output_dir) / "logs")),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=t.ddp_timeout)),
                             DistributedDataParallelKwargs(find_unused_parameters=t.find_unused_parameters)],
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and acc.num_processes == 1:
            raise RuntimeError(f"{launched} processes were launched but accelerate set up a single-process run in "
                               "each (no GPU?): each would train alone. On CPU launch with ACCELERATE_USE_CPU=true "
                               "(and --multi_gpu or configs/accelerate/multi_cpu.yaml)")
        return acc

    def _check_same_model(self, ckpt: Path) -> None:
        """A checkpoint of another model in output_dir stops the run before anything is loaded;
        other recipe changes are reported."""
        saved = self.ckpt.saved_recipe(ckpt)
        if saved is None:
            return
        old, new = flat(saved), flat(self.recipe.to_dict())
        diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
        model_diff = [k for k in diff if k.startswith("model.")]
        if model_diff:
            shown = ", ".join(f"{k} ({old.get(k)!r} there, {new.get(k)!r} here)" for k in model_diff[:3])
            more = f" and {len(model_diff) - 3} more" if len(model_diff) > 3 else ""
            raise ValueError(f"{self.out} holds a run of another model (differs in {shown}{more}): use another "
                             "train.output_dir, or train.resume=never to start over there")
        if diff:
            self.accelerator.print(f"mmjepa: warning: resuming {ckpt} with a recipe that differs in: {', '.join(diff)}")

    def _setup_data(self) -> None:
        acc, t = self.accelerator, self.recipe.train
        self.pipeline = DataPipeline(self.recipe.data, self.config, acc.process_index, acc.num_processes)
        ignored = self.pipeline.preflight()  # builds the processors (tokenizers), peeks at the data
        if ignored:
            fields = ", ".join(f"{k!r} ({m})" for k, m in sorted(ignored.items()))
            acc.print(f"mmjepa: data: ignoring field(s) {fields}: the model has no such modality "
                      f"(it has {', '.join(self.config.modalities)})")
        self.stream = DataStream(self.pipeline, pin_memory=acc.device.type == "cuda")
        per_epoch = self.pipeline.batches_per_epoch
        self.steps_per_epoch = None if per_epoch is None else max(1, per_epoch // t.grad_accum)
        self.samples_per_step = self.recipe.data.batch_size * t.grad_accum * acc.num_processes

    def _setup_model(self) -> None:
        acc, t, o = self.accelerator, self.recipe.train, self.recipe.optim
        set_seed(t.seed)  # identical initial weights on every process
        if self.recipe.model.pretrained:
            model = MMJepaModel.from_pretrained(self.recipe.model.pretrained, config=self.config)
        else:
            model = MMJepaModel(self.config)
            model.load_backbones()  # pretrained Hugging Face encoders (context and target), if any
        for m in model.modules():
            if isinstance(m, (Transformer, HFBackboneEncoder)):
                m.gradient_checkpointing = t.gradient_checkpointing
        optimizer = build_optimizer(model, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), fused=o.fused)
        if t.compile:
            model.compile(dynamic=False)  # mask lengths vary: a few static recompiles beat dynamic shapes
        self.model, self.optimizer = acc.prepare(model, optimizer)  # never the data loader (see mmjepa.data)

    def _setup_schedule(self) -> None:
        t, o = self.recipe.train, self.recipe.optim
        if t.max_steps is not None:
            self.total_steps = t.max_steps
        elif self.steps_per_epoch is None:
            raise ValueError("train.epochs needs a known epoch length: set train.max_steps, data.epoch_samples, "
                             "or num_samples on every source")
        else:
            self.total_steps = max(1, math.ceil(t.epochs * self.steps_per_epoch))
        if o.warmup_epochs is not None:
            if self.steps_per_epoch is None:
                raise ValueError("optim.warmup_epochs needs a known epoch length; use optim.warmup_steps")
            self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        else:
            self.warmup_steps = o.warmup_steps

    # ------------------------------------------------------------------ schedules
    def hyperparams(self, step: int) -> tuple[float, float, float]:
        """(lr, weight decay, EMA momentum) at ``step``."""
        o, T = self.recipe.optim, self.total_steps
        lr = cosine_with_warmup(step, T, self.warmup_steps, o.start_lr, o.lr, o.final_lr)
        wd = cosine(step, T, o.weight_decay, o.final_weight_decay)
        return lr, wd, self.unwrapped.momentum(step, T)

    @property
    def unwrapped(self) -> MMJepaModel:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples_seen": self.samples_seen, "data": self.stream.state_dict(),
                "total_steps": self.total_steps, "skipped_steps": self.skipped_steps,
                "bad_in_a_row": self.bad_in_a_row}

    def save_checkpoint(self) -> Path:
        return self.ckpt.save(self.step, self.state_dict(), self.out / "recipe.yaml")

    def load_checkpoint(self, path: Path) -> None:
        state = self.ckpt.load(path)
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        self.skipped_steps, self.bad_in_a_row = int(state.get("skipped_steps", 0)), int(state.get("bad_in_a_row", 0))
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            self.accelerator.print(f"mmjepa: the checkpoint was made for {state['total_steps']} steps, this run has "
                                   f"{self.total_steps}: the schedules follow the new length")
        self.stream.load_state_dict(state["data"])

    def export(self, final: bool = False) -> Path:
        """save_pretrained into ``output_dir/export`` (written aside, then renamed)."""
        return self.ckpt.export(self.model, lambda d, sd: self.unwrapped.save_pretrained(d, state_dict=sd),
                                self.out / "recipe.yaml",
                                {"step": self.step, "samples_seen": self.samples_seen, "final": final})

    def _finished_already(self, ckpt: Path | None) -> bool:
        return ckpt is not None and self.ckpt.trainer_state(ckpt).get("step", 0) >= self.total_steps

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        acc, t = self.accelerator, self.recipe.train
        resumed = self.resume_from
        if self._finished_already(resumed):
            self.load_checkpoint(resumed)
            export = self.out / "export"
            try:
                exported = json.loads((export / "training_state.json").read_text())
            except (OSError, ValueError):
                exported = {}
            if not (exported.get("final") and exported.get("step") == self.step):
                self.export(final=True)  # the run was killed after its final checkpoint, before its export
            return TrainResult(self.unwrapped, self.out, self.step, self.samples_seen, 0.0, [], resumed,
                               export if export.is_dir() else None, self.stream.skipped, 0.0, resumed,
                               already_finished=True, skipped_steps=self.skipped_steps)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_recipe(self.recipe, self.out / "recipe.yaml")
        self.ckpt.clean_stale()
        acc.wait_for_everyone()
        if resumed is not None:
            self.load_checkpoint(resumed)
            acc.print(f"mmjepa: resumed from {resumed} at step {self.step} "
                      f"(epoch {self.stream.epoch}, batch {self.stream.batch})")
        if acc.log_with:
            acc.init_trackers(t.project, config=flat(self.recipe.to_dict()))

        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (acc.is_main_process and t.progress),
                   unit="step", dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        window_steps, window_t0 = 0, time.perf_counter()
        run_t0, first_step_done_t, steps_this_run = time.perf_counter(), None, 0
        last_ckpt = resumed
        export_dir = None
        with StopRequest() as self.stop:
            try:
                while self.step < self.total_steps:
                    lr, wd, momentum = self.hyperparams(self.step)
                    logging = (self.step + 1) % t.log_every == 0 or self.step + 1 == self.total_steps
                    grad_norm = self.train_step([next(self.stream) for _ in range(t.grad_accum)], sums, monitor=logging)
                    steps_this_run += 1
                    self.samples_seen += self.samples_per_step
                    window_steps += 1
                    if first_step_done_t is None:
                        first_step_done_t = time.perf_counter()
                    bar.update(1)

                    logs = None
                    if self.step % t.log_every == 0 or self.step == self.total_steps:
                        logs = self._log(sums, window_steps, time.perf_counter() - window_t0, lr, wd, momentum, grad_norm)
                        fallen = self.collapsed(logs)
                        bar.set_postfix({k: logs[k] for k in ("loss", "samples_per_s") if k in logs}
                                        | {k.split("/")[-1]: f"{v:.3f}" for k, v in logs.items() if k.endswith("pred_std")}
                                        | ({"COLLAPSE": ",".join(f.split(" ")[0] for f in fallen)} if fallen else {}))
                        sums, window_steps, window_t0 = {}, 0, time.perf_counter()
                        self._good_in_window = 0
                        if fallen:
                            acc.print(f"mmjepa: warning: collapse at step {self.step}: {'; '.join(fallen)}")
                            if t.stop_on_collapse:
                                last_ckpt = self.save_checkpoint()
                                raise CollapseError(f"collapse at step {self.step}: {'; '.join(fallen)}; "
                                                    f"stopped with the state saved in {last_ckpt}")
                    if self.bad_in_a_row >= t.max_bad_steps:
                        last_ckpt = self.save_checkpoint()
                        first = self.step - self.bad_in_a_row + 1
                        raise NonFiniteError(
                            f"the loss or gradient norm was NaN/Inf for {self.bad_in_a_row} consecutive steps "
                            f"({first}-{self.step}; {self.skipped_steps} skipped in all; train.max_bad_steps="
                            f"{t.max_bad_steps}): stopped with the state saved in {last_ckpt} (the weights "
                            "before those steps); try a lower optim.lr, a longer warm-up, optim.clip_grad, or check "
                            "the data")
                    if t.save_every and self.step % t.save_every == 0 and self.step < self.total_steps:
                        last_ckpt = self.save_checkpoint()
                    if t.export_every and self.step % t.export_every == 0 and self.step < self.total_steps:
                        export_dir = self.export()
                    for cb in self.callbacks:
                        cb(self.step, logs)
                    if self.stop_agreed and self.step < self.total_steps:  # at the last step: finish
                        if last_ckpt is None or checkpoint_step(last_ckpt) != self.step:
                            last_ckpt = self.save_checkpoint()
                        raise KeyboardInterrupt
                loop_end = time.perf_counter()  # throughput excludes the final save and export
                last_ckpt = self.save_checkpoint()
                export_dir = self.export(final=True)
            except KeyboardInterrupt:
                where = f"step {checkpoint_step(last_ckpt)} ({last_ckpt})" if last_ckpt is not None else "none yet"
                raise TrainingInterrupted(f"stopped at step {self.step}; last checkpoint: {where}; run the same "
                                          "command to resume") from None
            except BaseException as err:
                if acc.num_processes > 1:
                    print(f"mmjepa: rank {acc.process_index}: training stopped at step {self.step}: "
                          f"{type(err).__name__}: {err} (if another process died, see its log)", file=sys.stderr,
                          flush=True)
                raise
            finally:
                bar.close()
                self.stream.close()
        if acc.log_with:
            acc.end_training()
        end = time.perf_counter()
        if steps_this_run > 1 and first_step_done_t is not None:  # the first step (warm-up) left out
            sps = (steps_this_run - 1) * self.samples_per_step / max(loop_end - first_step_done_t, 1e-9)
        else:
            sps = steps_this_run * self.samples_per_step / max(loop_end - run_t0, 1e-9)
        return TrainResult(self.unwrapped, self.out, self.step, self.samples_seen, sps, self.history, last_ckpt,
                           export_dir, self.stream.skipped, end - run_t0, resumed, skipped_steps=self.skipped_steps)

    def train_step(self, batches: list[dict[str, Any]], sums: dict[str, torch.Tensor] | None = None,
                   monitor: bool = True):
        """One optimizer step over ``grad_accum`` micro-batches; ``self.step`` += 1. Loss terms and
        metrics are added into ``sums``; the collapse monitors (computed when ``monitor``) are kept
        as they are, the last step's. Returns the gradient norm (when clipping) or None.

        A step whose loss or gradient norm is NaN/Inf on any process is skipped on all of them: no
        optimizer step, no EMA update, gradients dropped, nothing added to ``sums``; it is counted
        in ``self.skipped_steps`` (and ``self.bad_in_a_row``) and ``self.step`` still advances."""
        acc, o = self.accelerator, self.recipe.optim
        lr, wd, momentum = self.hyperparams(self.step)
        n = len(batches)
        step_sums: dict[str, torch.Tensor] = {}
        monitors: dict[str, torch.Tensor] = {}
        loss_total = torch.zeros((), device=acc.device)
        # running statistics the forward updates (the embedding centres): restored if the step is bad
        centers = getattr(self.unwrapped, "centers", None)
        saved_buffers = {k: v.clone() for k, v in centers.state_dict().items()} if centers is not None else None
        # 1. forward and backward per micro-batch (gradients synchronised on the last)
        for micro, batch in enumerate(batches):
            ctx = acc.no_sync(self.model) if micro < n - 1 else contextlib.nullcontext()
            with ctx:
                inputs = send_to_device(model_inputs(batch), acc.device)  # the data loader is not prepared
                out = self.model(**inputs, monitor=monitor and micro == n - 1)
                acc.backward(out.loss / n)
            loss_total = loss_total + out.loss.detach().float()
            if sums is not None:
                for k, v in {"loss": out.loss, **{f"loss/{m}": l for m, l in out.losses.items()},
                             **out.metrics}.items():
                    if k.startswith("monitor/"):
                        monitors[k] = v.detach().float()
                        continue
                    v = v.detach().float() / n
                    step_sums[k] = step_sums[k] + v if k in step_sums else v
        # 2. clip (or measure), check, schedule, step
        grad_norm = None
        if o.clip_grad is not None:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), o.clip_grad)
        fp16 = acc.scaler is not None  # the grad scaler skips (and counts down) overflowing steps itself
        bad = not bool(torch.isfinite(loss_total))
        if not fp16 and not bad:
            norm = grad_norm if grad_norm is not None else torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None])
            bad = not bool(torch.isfinite(torch.as_tensor(norm)))
        # every process skips, or none does; every process stops, or none does: one all-reduce
        stopping = self.stop is not None and self.stop.requested
        if acc.num_processes > 1:
            flags = acc.reduce(torch.tensor([float(bad), float(stopping)], device=acc.device), reduction="sum")
            bad, stopping = bool(flags[0] > 0), bool(flags[1] > 0)
        self.stop_agreed = stopping
        if bad and saved_buffers is not None:
            centers.load_state_dict(saved_buffers)
        if bad and not fp16:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            set_hyperparams(self.optimizer, lr, wd)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if bad:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
        else:
            self.bad_in_a_row = 0
            # 3. EMA of the target encoders
            self.unwrapped.update_target(momentum)
            self._good_in_window += 1
            if sums is not None:
                for k, v in step_sums.items():
                    sums[k] = sums[k] + v if k in sums else v
                self._monitors.update(monitors)
        self.step += 1
        return grad_norm

    def collapsed(self, logs: dict[str, Any]) -> list[str]:
        """The monitors of ``logs`` under their ``train.collapse_floors`` (a floor named by monitor
        applies to every modality; ``<modality>/<monitor>`` to one)."""
        floors = self.recipe.train.collapse_floors
        out = []
        for key, value in logs.items():
            if not key.startswith("monitor/"):
                continue
            name = key[len("monitor/"):]  # <modality>/<monitor>
            floor = floors.get(name, floors.get(name.split("/")[-1]))
            if floor is not None and value < floor:
                out.append(f"{name} {value:.4g} < {floor:g}")
        return out

    def _log(self, sums, n_steps, dt, lr, wd, momentum, grad_norm) -> dict[str, Any]:
        acc = self.accelerator
        averaged, monitors = sorted(sums), sorted(self._monitors)  # window means; the last monitors
        keys = averaged + monitors
        good = self._good_in_window
        vals = [sums[k] / max(good, 1) for k in averaged] + [self._monitors[k] for k in monitors]
        vals = torch.stack(vals) if vals else torch.zeros(0)
        self._monitors = {}
        vals = acc.reduce(vals.to(acc.device), reduction="mean")  # the same steps on every rank
        n = self.pipeline.batches_per_epoch
        epoch = self.stream.epoch + (self.stream.batch / n if n else 0.0)  # fractional epochs done
        logs: dict[str, Any] = {"step": self.step, "epoch": epoch}
        logs.update({k: float(v) for k, v in zip(keys, vals.tolist())})
        logs.update({"lr": lr, "weight_decay": wd, "ema_momentum": momentum,
                     "samples_seen": self.samples_seen,
                     "samples_per_s": n_steps * self.samples_per_step / max(dt, 1e-9),
                     "data_skipped": self.stream.skipped, "skipped_steps": self.skipped_steps})
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        self.history.append(logs)
        if acc.log_with:
            acc.log({k: v for k, v in logs.items() if k != "step"}, step=self.step)
        return logs


def train(recipe: Recipe | str | os.PathLike | dict, overrides: Sequence[str] = (),
          callbacks: Sequence[Callable[[int, dict | None], None]] = ()) -> TrainResult:
    """Train from a recipe (object, YAML path or dict); ``callbacks(step, logs)`` run after each step.

    Returns a :class:`TrainResult` (``model``, ``output_dir``, ``steps``, ``samples_seen``,
    ``train_samples_per_s``, ``history`` ...).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        recipe = load_recipe(recipe.to_dict(), overrides)
    return Trainer(recipe, callbacks).run()
