"""The trainer: a recipe (YAML) in, a trained ``MMJepaModel`` out, on one CPU or many GPUs/nodes.

    mmjepa train recipes/image/digits_ijepa_cpu.yaml train.max_steps=50 model.hidden_size=64
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m mmjepa train RECIPE.yaml

    from mmjepa.train import load_recipe, train
    result = train(load_recipe("recipes/image/digits_ijepa_cpu.yaml", ["train.max_steps=50"]))

One training step = ``grad_accum`` micro-batches (forward, backward; gradients synchronised on the
last), clipping, the scheduled LR and weight decay written into the optimizer, an AdamW step and the
EMA update of the target encoders. Checkpoints (``output_dir/checkpoints/step_XXXXXXXX``) hold the
model (EMA targets included), optimizer, RNG states and, per process, the step counter and the data
position; they are written to a temporary folder first and renamed, so a kill during a save leaves
the previous checkpoint intact. ``train.resume: auto`` (default) continues from the newest one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

from .data import DataConfig, DataPipeline, DataStream, model_inputs

# ============================================================================ recipe
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class ModelSection:
    """``model``: a preset plus any :class:`mmjepa.MMJepaConfig` option (``modalities`` included),
    or ``pretrained`` (a folder or Hub id) to start from saved weights."""

    preset: str | None = "tiny"
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """``optim``: AdamW (no decay on norms, biases, tokens, embeddings), LR warm-up from
    ``start_lr`` to ``lr`` then cosine to ``final_lr``; weight decay cosine from ``weight_decay``
    to ``final_weight_decay`` (I-JEPA: 0.04 -> 0.4)."""

    lr: float = 1e-3
    start_lr: float = 0.0
    final_lr: float = 1e-6
    warmup_steps: int = 0
    warmup_epochs: float | None = None  # overrides warmup_steps when set
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None  # max gradient norm; None = no clipping
    fused: bool | None = None

    def __post_init__(self):
        for name in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.warmup_steps < 0 or (self.warmup_epochs is not None and self.warmup_epochs < 0):
            raise ValueError("warmup_steps / warmup_epochs must be >= 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 (or null for none), got {self.clip_grad}")


@dataclass
class TrainConfig:
    """``train``: length, precision, memory/speed options, logging, checkpoints, export."""

    max_steps: int | None = None
    epochs: float | None = None  # used when max_steps is not set
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    compile: bool = False
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints; 0 = at the end only
    keep_checkpoints: int = 2
    export_every: int = 0  # steps between save_pretrained exports; 0 = at the end only
    output_dir: str = "runs/mmjepa"
    seed: int = 0
    tracker: str | None = "tensorboard"  # tensorboard | wandb | mlflow | comet_ml | aim | none
    project: str = "mmjepa"
    resume: str = "auto"  # auto (newest checkpoint in output_dir) | never | a checkpoint folder
    progress: bool = True
    ddp_timeout: int = 1800  # seconds a process waits for the others before failing
    find_unused_parameters: bool = False

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("max_steps or epochs must be set")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        for name in ("log_every", "keep_checkpoints", "ddp_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "export_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tracker in ("none", "", "null"):
            self.tracker = None


@dataclass
class Recipe:
    """One experiment: ``model``, ``data``, ``optim``, ``train`` (+ a ``name`` and ``description``)."""

    model: ModelSection
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    name: str = ""
    description: str = ""

    def model_config(self):
        """The :class:`mmjepa.MMJepaConfig` this recipe describes."""
        return build_model_config(self.model)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (every default filled in), ready for YAML."""
        out = _to_plain(dataclasses.asdict(self))
        model = out.pop("model")
        out["model"] = {"preset": model["preset"], "pretrained": model["pretrained"], **model["config"]}
        return {k: out[k] for k in ("name", "description", "model", "data", "optim", "train")}


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check/convert one recipe value to the annotated type, or raise ValueError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ValueError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ValueError:
                continue
        raise bad
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(args[0], v, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{key}.{i}") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys and bad values raise a ValueError that
    names the key (``train.max_steps: expected int, got 'ten'``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown recipe key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; "
                         f"{prefix} takes: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        msg = str(err)
        if msg.startswith(f"{prefix}."):
            raise
        first = msg.split(" ", 1)[0]
        raise ValueError(f"{prefix}.{msg}" if first in names else f"{prefix}: {msg}") from None


def _model_section(data: dict[str, Any]) -> ModelSection:
    """Validate ``model``: option names against MMJepaConfig, modality options against each
    modality's config dataclass (with the key in every error)."""
    from .config import PRESETS, MMJepaConfig
    from .modalities import get_modality

    data = dict(data or {})
    preset = _coerce(str | None, data.pop("preset", "tiny"), "model.preset")
    pretrained = _coerce(str | None, data.pop("pretrained", None), "model.pretrained")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose from {sorted(PRESETS)} or null")
    params = inspect.signature(MMJepaConfig.__init__).parameters
    known = [p for p in params if p not in ("self", "kwargs")]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown recipe key(s) {', '.join('model.' + k for k in unknown)}; "
                         f"model takes preset, pretrained and: {', '.join(known)}")
    config = {}
    for k, v in data.items():
        if k == "modalities":
            if not isinstance(v, dict) or not v:
                raise ValueError(f"model.modalities: expected a mapping of modality name -> options, got {v!r}")
            mods = {}
            for name, opts in v.items():
                try:
                    mod = get_modality(name)
                except ValueError as err:
                    raise ValueError(f"model.modalities.{name}: {err}") from None
                opts = dict(opts or {})
                typed = from_dict(mod.config_class, opts, f"model.modalities.{name}")  # validates
                mods[name] = {o: _to_plain(getattr(typed, o)) for o in opts}
            config[k] = mods
            continue
        ann = params[k].annotation
        default = params[k].default
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(ann if isinstance(ann, str) else "", None)
        if tp is None and default is not inspect.Parameter.empty and default is not None:
            tp = type(default)
        config[k] = _coerce(tp, v, f"model.{k}") if tp in (int, float, bool, str) else v
    section = ModelSection(preset, pretrained, config)
    try:
        build_model_config(section)
    except (ValueError, TypeError) as err:
        raise ValueError(f"model: {err}") from None
    return section


def build_model_config(section: ModelSection):
    """ModelSection -> MMJepaConfig (preset, then the recipe's options on top)."""
    from .config import MMJepaConfig

    if section.pretrained:
        config = MMJepaConfig.from_pretrained(section.pretrained)
        for k, v in section.config.items():
            setattr(config, k, v)
        config.validate_values()
        return config
    if section.preset:
        return MMJepaConfig.from_preset(section.preset, **section.config)
    return MMJepaConfig(**section.config)


def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. train.max_steps=50)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {item!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override {item!r}: cannot parse the value: {err}") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` items (values parsed as YAML) in a copy of the raw recipe dict."""
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"override {item!r}: {where} is not an index of a {len(node)}-item list")
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(path[:i])} is not a mapping")
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ValueError(f"override {item!r}: {'.'.join(path)} is not an index of a {len(node)}-item list")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ValueError(f"override {item!r}: {'.'.join(path[:-1])} is not a mapping")
    return raw


def load_recipe(path_or_dict: str | os.PathLike | dict[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (or take a dict), apply ``key=value`` overrides, validate.

    Raises ValueError naming the key for unknown keys and bad values.
    """
    import yaml

    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError("a recipe must be a mapping with model/data/optim/train sections")
    raw = apply_overrides(raw, list(overrides))
    sections = {"name", "description", "model", "data", "optim", "train"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ValueError(f"unknown recipe key(s) {', '.join(unknown)}; a recipe has: {', '.join(sorted(sections))}")
    for sec in ("data", "train"):
        if not isinstance(raw.get(sec), dict):
            raise ValueError(f"{sec}: the recipe needs a {sec} section (a mapping)")
    return Recipe(
        model=_model_section(raw.get("model") or {}),
        data=from_dict(DataConfig, raw["data"], "data"),
        optim=from_dict(OptimConfig, raw.get("optim") or {}, "optim"),
        train=from_dict(TrainConfig, raw["train"], "train"),
        name=_coerce(str, raw.get("name", ""), "name"),
        description=_coerce(str, raw.get("description", ""), "description"),
    )


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


# ============================================================================ checkpoints
CKPT_PREFIX = "step_"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir/checkpoints``, oldest first (temporary folders ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    ckpts = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[5:].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name[5:]))


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place (rename; an existing ``final`` is swapped out first)."""
    if final.exists():
        old = final.with_name(f".old_{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _fsync_dir(path: Path) -> None:
    for p in [*path.rglob("*"), path]:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


# ============================================================================ trainer
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


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def _make_accelerator(recipe: Recipe):
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:  # a previous run in this process: its precision etc. may differ
        AcceleratorState._reset_state()  # (keeps the process group)
    t = recipe.train
    log_with = None
    if t.tracker:
        from accelerate.tracking import filter_trackers

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
        raise RuntimeError(f"{launched} processes were launched but accelerate set up a single-process run in each "
                           "(no GPU?): each would train alone. On CPU launch with ACCELERATE_USE_CPU=true "
                           "(and --multi_gpu or configs/accelerate/multi_cpu.yaml)")
    return acc


def _set_checkpointing(model: torch.nn.Module, enable: bool) -> None:
    from .layers import Transformer

    for m in model.modules():
        if isinstance(m, Transformer):
            m.gradient_checkpointing = enable


class Trainer:
    """Holds the pieces of one run; :func:`train` is the entry point."""

    def __init__(self, recipe: Recipe, callbacks: Sequence[Callable[[int, dict | None], None]] = ()):
        from accelerate.utils import set_seed

        from .model import MMJepaModel
        from .optim import build_optimizer

        self.recipe = recipe
        self.callbacks = list(callbacks)
        t = recipe.train
        self.out = Path(t.output_dir)
        self.accelerator = acc = _make_accelerator(recipe)
        set_seed(t.seed)  # identical initial weights on every process

        self.config = recipe.model_config()
        if recipe.model.pretrained:
            model = MMJepaModel.from_pretrained(recipe.model.pretrained, config=self.config)
        else:
            model = MMJepaModel(self.config)
        _set_checkpointing(model, t.gradient_checkpointing)
        o = recipe.optim
        optimizer = build_optimizer(model, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), fused=o.fused)
        if t.compile:
            model.compile(dynamic=False)  # mask lengths vary: a few static recompiles beat dynamic shapes
        self.model, self.optimizer = acc.prepare(model, optimizer)  # never the data loader (see mmjepa.data)

        self.pipeline = DataPipeline(recipe.data, self.config, acc.process_index, acc.num_processes)
        self.stream = DataStream(self.pipeline, pin_memory=acc.device.type == "cuda")
        per_epoch = self.pipeline.batches_per_epoch
        self.steps_per_epoch = None if per_epoch is None else max(1, per_epoch // t.grad_accum)
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
        self.samples_per_step = recipe.data.batch_size * t.grad_accum * acc.num_processes
        self.step = 0
        self.samples_seen = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ schedules
    def hyperparams(self, step: int) -> tuple[float, float, float]:
        """(lr, weight decay, EMA momentum) at ``step``."""
        from .optim import cosine, cosine_with_warmup

        o, T = self.recipe.optim, self.total_steps
        lr = cosine_with_warmup(step, T, self.warmup_steps, o.start_lr, o.lr, o.final_lr)
        wd = cosine(step, T, o.weight_decay, o.final_weight_decay)
        return lr, wd, self.unwrapped.momentum(step, T)

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples_seen": self.samples_seen, "data": self.stream.state_dict(),
                "total_steps": self.total_steps}

    def save_checkpoint(self) -> Path:
        """save_state into ``.tmp_step_N`` (every process), then rename to ``step_N`` (main)."""
        acc = self.accelerator
        root = self.out / "checkpoints"
        final = root / f"{CKPT_PREFIX}{self.step:08d}"
        tmp = root / f".tmp_{final.name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        (tmp / f"trainer_state_{acc.process_index}.json").write_text(json.dumps(self.state_dict()))
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.copy(self.out / "recipe.yaml", tmp / "recipe.yaml")
            _fsync_dir(tmp)
            _atomic_replace_dir(tmp, final)
            for old in list_checkpoints(self.out)[: -self.recipe.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        acc = self.accelerator
        state_file = path / f"trainer_state_{acc.process_index}.json"
        if not state_file.exists():
            raise ValueError(f"{path} has no {state_file.name}: it was written by fewer processes than "
                             f"this run's {acc.num_processes}")
        acc.load_state(str(path))
        state = json.loads(state_file.read_text())
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            acc.print(f"mmjepa: the checkpoint was made for {state['total_steps']} steps, this run has "
                      f"{self.total_steps}: the schedules follow the new length")
        self.stream.load_state_dict(state["data"])

    def export(self, final: bool = False) -> Path:
        """save_pretrained into ``output_dir/export`` (written aside, then renamed)."""
        acc = self.accelerator
        dest = self.out / "export"
        state_dict = acc.get_state_dict(self.model)  # gathers FSDP/DeepSpeed shards
        if acc.is_main_process:
            tmp = self.out / ".tmp_export"
            shutil.rmtree(tmp, ignore_errors=True)
            self.unwrapped.save_pretrained(tmp, state_dict=state_dict)
            shutil.copy(self.out / "recipe.yaml", tmp / "recipe.yaml")
            (tmp / "training_state.json").write_text(json.dumps({"step": self.step, "samples_seen": self.samples_seen,
                                                                 "final": final}))
            _atomic_replace_dir(tmp, dest)
        acc.wait_for_everyone()
        return dest

    def _resume_path(self) -> Path | None:
        r = self.recipe.train.resume
        if r == "never":
            return None
        if r == "auto":
            ckpts = list_checkpoints(self.out)
            return ckpts[-1] if ckpts else None
        path = Path(r)
        if not path.is_dir():
            raise FileNotFoundError(f"train.resume: no checkpoint folder {path}")
        return path

    def _check_recipe_matches(self, ckpt: Path) -> None:
        import yaml

        saved = ckpt / "recipe.yaml"
        if not saved.exists():
            return
        old, new = yaml.safe_load(saved.read_text()), self.recipe.to_dict()
        ignore = {"train.max_steps", "train.epochs", "train.resume", "train.save_every", "train.export_every",
                  "train.log_every", "train.progress", "train.keep_checkpoints", "train.tracker",
                  "train.ddp_timeout", "train.output_dir", "description"}
        fo, fn = _flat(old), _flat(new)
        diff = sorted(k for k in set(fo) | set(fn) if k not in ignore and fo.get(k) != fn.get(k))
        if diff:
            self.accelerator.print(f"mmjepa: warning: resuming {ckpt} with a recipe that differs in: {', '.join(diff)}")

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        acc, t = self.accelerator, self.recipe.train
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in (self.out / "checkpoints").glob(".tmp_*"):
                shutil.rmtree(stale, ignore_errors=True)  # a save that was killed half-way
            save_recipe(self.recipe, self.out / "recipe.yaml")
        acc.wait_for_everyone()
        resumed = self._resume_path()
        if resumed is not None:
            self._check_recipe_matches(resumed)
            self.load_checkpoint(resumed)
            acc.print(f"mmjepa: resumed from {resumed} at step {self.step} "
                      f"(epoch {self.stream.epoch}, batch {self.stream.batch})")
        if acc.log_with:
            acc.init_trackers(t.project, config=_flat(self.recipe.to_dict()))

        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (acc.is_main_process and t.progress),
                   unit="step", dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        window_steps, window_t0 = 0, time.perf_counter()
        run_t0, first_step_done_t, steps_this_run = time.perf_counter(), None, 0
        last_ckpt = resumed
        export_dir = None
        try:
            while self.step < self.total_steps:
                lr, wd, momentum = self.hyperparams(self.step)
                grad_norm = self.train_step([next(self.stream) for _ in range(t.grad_accum)], sums)
                steps_this_run += 1
                self.samples_seen += self.samples_per_step
                window_steps += 1
                if first_step_done_t is None:
                    first_step_done_t = time.perf_counter()
                bar.update(1)

                logs = None
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    logs = self._log(sums, window_steps, time.perf_counter() - window_t0, lr, wd, momentum, grad_norm)
                    bar.set_postfix({k: logs[k] for k in ("loss", "samples_per_s") if k in logs}
                                    | {k.split("/")[-1]: f"{v:.3f}" for k, v in logs.items() if k.endswith("pred_std")})
                    sums, window_steps, window_t0 = {}, 0, time.perf_counter()
                if t.save_every and self.step % t.save_every == 0 and self.step < self.total_steps:
                    last_ckpt = self.save_checkpoint()
                if t.export_every and self.step % t.export_every == 0 and self.step < self.total_steps:
                    export_dir = self.export()
                for cb in self.callbacks:
                    cb(self.step, logs)
            loop_end = time.perf_counter()  # throughput excludes the final save and export
            if resumed is None or steps_this_run > 0 or last_ckpt is None:
                last_ckpt = self.save_checkpoint()
            export_dir = self.export(final=True)
        except BaseException as err:
            if acc.num_processes > 1 and not isinstance(err, KeyboardInterrupt):
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
                           export_dir, self.stream.skipped, end - run_t0, resumed)

    def train_step(self, batches: list[dict[str, Any]], sums: dict[str, torch.Tensor] | None = None):
        """One optimizer step over ``grad_accum`` micro-batches: forward/backward (gradients synced
        on the last), clipping, scheduled LR/WD, AdamW, EMA update; ``self.step`` += 1. Loss terms
        and monitors are added into ``sums``. Returns the gradient norm (when clipping) or None."""
        from .optim import set_hyperparams

        acc, o = self.accelerator, self.recipe.optim
        lr, wd, momentum = self.hyperparams(self.step)
        n = len(batches)
        for micro, batch in enumerate(batches):
            ctx = acc.no_sync(self.model) if micro < n - 1 else contextlib.nullcontext()
            with ctx:
                out = self.model(**model_inputs(batch))
                acc.backward(out.loss / n)
            if sums is not None:
                for k, v in {"loss": out.loss, **{f"loss/{m}": l for m, l in out.losses.items()},
                             **out.metrics}.items():
                    v = v.detach().float() / n
                    sums[k] = sums[k] + v if k in sums else v
        grad_norm = None
        if o.clip_grad is not None:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), o.clip_grad)
        set_hyperparams(self.optimizer, lr, wd)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.unwrapped.update_target(momentum)
        self.step += 1
        return grad_norm

    def _log(self, sums, n_steps, dt, lr, wd, momentum, grad_norm) -> dict[str, Any]:
        acc = self.accelerator
        keys = sorted(sums)
        vals = torch.stack([sums[k] for k in keys]) / max(n_steps, 1)
        vals = acc.reduce(vals.to(acc.device), reduction="mean")  # the same steps on every rank
        n = self.pipeline.batches_per_epoch
        epoch = self.stream.epoch + (self.stream.batch / n if n else 0.0)  # fractional epochs done
        logs: dict[str, Any] = {"step": self.step, "epoch": epoch}
        logs.update({k: float(v) for k, v in zip(keys, vals.tolist())})
        logs.update({"lr": lr, "weight_decay": wd, "ema_momentum": momentum,
                     "samples_seen": self.samples_seen,
                     "samples_per_s": n_steps * self.samples_per_step / max(dt, 1e-9),
                     "data_skipped": self.stream.skipped})
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmjepa train", description="Train from a YAML recipe; key=value items "
                                "override recipe entries (e.g. train.max_steps=50 model.hidden_size=64).")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--print", action="store_true", help="print the resolved recipe and exit")
    args = p.parse_intermixed_args(argv)  # overrides before or after the options
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"mmjepa train: {err}", file=sys.stderr)
        return 2
    if args.print:
        import yaml

        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return 0
    result = train(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.history[-1] if result.history else {}
        print(f"trained {result.steps} steps, {result.samples_seen} samples, "
              f"{result.train_samples_per_s:.1f} samples/s, final loss {last.get('loss', float('nan')):.4f}; "
              f"{result.skipped_samples} bad samples skipped; checkpoint {result.checkpoint}, export {result.export_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
