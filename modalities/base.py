"""The modality plug-in interface and its registry.

A modality is one file that defines a :class:`Modality` subclass and registers it with
:func:`register_modality`. The core (``mmjepa/``) talks to a modality only through this class, so
adding a modality (video, depth, a 1-D sensor) touches no core file. A plug-in owns:

- its options: ``config_class``, a dataclass stored as a plain dict in ``MMJepaConfig.modalities``;
- its inputs: ``input_key`` (the batch key of the model input, e.g. ``pixel_values``) and
  :meth:`valid_tokens` (which tokens are real, when samples are padded);
- raw data: ``extensions`` (the file extensions it decodes, e.g. ``png``) and :meth:`decode`
  (bytes of one file -> what its processor takes); shards, the data pipeline and the
  ``MMJepaProcessor`` all go through these;
- processing: ``processor_class`` and, for ``MMJepaProcessor(...)``, its keyword
  ``processor_arg`` (``images=``) and extra keywords ``processor_kwargs`` (``sampling_rate=``);
  ``takes_strings`` when plain strings are its raw values (zero-shot prompts, typed queries);
  ``hf_role``, the transformers processor role its processor plays in a saved folder
  (``image_processor``, ``feature_extractor`` or ``tokenizer``; None: rebuilt from the model's
  options), with :meth:`hf_object` / :meth:`from_hf_object` to go between the two;
- tokens: ``embed_class``, an ``nn.Module`` (cfg, dim, add_positions) that maps the model input to
  (B, N, D) tokens with fixed positions added, exposing ``num_tokens``, ``coords`` (an (N, ndim)
  integer grid buffer, for RoPE), ``grid_coords()`` and ``position_table(dim)``;
- masks: :meth:`build_mask_sampler` (see ``mmjepa.masking``);
- batching: :meth:`collate` (per-sample model inputs -> one batch, padding as needed), reading
  ``input_key`` and ``sample_keys`` of each sample;
- pooling: :meth:`pool` (token latents -> one embedding per sample) and :meth:`probe_features`
  (the view a frozen linear probe gets);
- set-up: :meth:`resolve_config` (load and check external resources such as a tokenizer before a
  run writes anything) and :attr:`default_objectives` (objectives a model of this modality gets
  when its config names none).

Every method is a classmethod: a plug-in is stateless, its options travel in ``cfg``.

The built-in modalities (image, audio, text) are imported on first use; third-party packages can
register theirs through the ``mmjepa.modalities`` entry-point group (``name = "package.module"``),
or simply by importing a module that calls :func:`register_modality`.
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib.metadata import entry_points
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from transformers import initialization as init

from mmjepa.layers import masked_mean, sincos_2d
from mmjepa.options import options_from_dict

_REGISTRY: dict[str, type["Modality"]] = {}
BUILTIN = {"image": "mmjepa.modalities.image", "audio": "mmjepa.modalities.audio", "text": "mmjepa.modalities.text"}
ENTRY_POINT_GROUP = "mmjepa.modalities"


class Modality:
    """Base class of a modality plug-in."""

    name: ClassVar[str]
    input_key: ClassVar[str]
    config_class: ClassVar[type]
    embed_class: ClassVar[type[nn.Module]]  # (cfg, dim, add_positions) -> tokens (B, N, D)
    processor_class: ClassVar[type]  # (cfg) -> callable: raw values -> model inputs
    processor_arg: ClassVar[str]  # keyword of MMJepaProcessor.__call__, e.g. "images"
    processor_kwargs: ClassVar[tuple[str, ...]] = ()  # extra keywords routed to this processor
    extensions: ClassVar[tuple[str, ...]] = ()  # file extensions decode() understands, lower case
    takes_strings: ClassVar[bool] = False  # its processor takes plain strings (prompts, typed queries)
    hf_role: ClassVar[str | None] = None  # "image_processor" | "feature_extractor" | "tokenizer" | None
    sample_keys: ClassVar[tuple[str, ...]] = ()  # per-sample keys collate() reads besides input_key
    default_objectives: ClassVar[dict[str, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ options
    @classmethod
    def make_config(cls, cfg: dict[str, Any] | None = None) -> Any:
        """Dict (possibly partial) -> the modality's config dataclass, rejecting unknown keys."""
        return options_from_dict(cls.config_class, cfg, f"{cls.name} modality")

    @classmethod
    def resolve_config(cls, cfg: Any) -> dict[str, Any]:
        """Options to set before a run starts (e.g. a tokenizer's vocabulary fingerprint), after
        loading and checking what ``cfg`` names; raises ValueError naming the bad option. Default:
        nothing to resolve."""
        return {}

    # ------------------------------------------------------------------ raw data
    @classmethod
    def decode(cls, data: bytes, ext: str, cfg: Any) -> Any:
        """Bytes of one file with extension ``ext`` -> a value the processor takes."""
        return data

    # ------------------------------------------------------------------ model side
    @classmethod
    def build_embed(cls, cfg: Any, dim: int, add_positions: bool = True) -> nn.Module:
        return cls.embed_class(cfg, dim, add_positions)

    @classmethod
    def build_processor(cls, cfg: Any, train: bool = False, **kwargs: Any) -> Any:
        """The processor; ``train``: the one the training data pipeline uses. A processor that
        augments its inputs in training sets ``augments = True`` and takes a ``generator=``
        (the pipeline's, seeded per batch: augmentation is as reproducible as the masks)."""
        return cls.processor_class(cfg, **kwargs)

    @classmethod
    def hf_object(cls, processor: Any) -> Any:
        """The transformers object that ``save_pretrained`` writes for this modality's processor
        (its ``hf_role``). Default: the processor itself (an image processor / feature extractor)."""
        return processor

    @classmethod
    def from_hf_object(cls, cfg: Any, obj: Any) -> Any:
        """The inverse of :meth:`hf_object`: a loaded transformers object -> this modality's processor."""
        return obj

    @classmethod
    def build_mask_sampler(cls, cfg: Any) -> Any:
        raise NotImplementedError(f"the {cls.name} modality defines no mask sampler")

    @classmethod
    def collate(cls, samples: list[dict[str, Any]], cfg: Any) -> dict[str, torch.Tensor]:
        """Per-sample model inputs -> a batch. Default: stack ``input_key``."""
        return {cls.input_key: torch.stack([torch.as_tensor(s[cls.input_key]) for s in samples])}

    @classmethod
    def valid_tokens(cls, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, N) bool mask of real tokens, or None when every token is real (the default)."""
        return None

    @classmethod
    def pool(cls, h: torch.Tensor, valid: torch.Tensor | None, cfg: Any) -> torch.Tensor:
        """Token latents (B, N, D) -> one embedding per sample (B, D): the mean over real tokens."""
        return masked_mean(h, valid)

    @classmethod
    def probe_features(cls, h: torch.Tensor, valid: torch.Tensor | None, cfg: Any) -> torch.Tensor:
        """Token latents (B, N, D) -> the features a frozen linear probe fits (B, F). Default: :meth:`pool`."""
        return cls.pool(h, valid, cfg)


def options_of(config_class: type, saved: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``saved`` (a processor's saved dict) that are options of ``config_class``;
    the bookkeeping keys transformers adds (``image_processor_type``, ``processor_class``...) are dropped."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(k for k in saved if k not in names and not k.endswith(("_type", "processor_class")))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} option(s) {unknown}")
    return {k: v for k, v in saved.items() if k in names}


def pair(x: int | Sequence[int]) -> tuple[int, int]:
    """An int or a 2-sequence -> (int, int) (patch and grid sizes)."""
    if isinstance(x, int) and not isinstance(x, bool):
        return (x, x)
    try:
        a, b = x
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"expected an int or a pair of ints, got {x!r}") from None


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a modality available by its ``name``."""
    for attr in ("name", "input_key", "config_class", "embed_class", "processor_class", "processor_arg"):
        if not hasattr(cls, attr):
            raise TypeError(f"modality plug-in {cls.__name__} must define {attr}")
    _REGISTRY[cls.name] = cls
    return cls


def _plugin_modules() -> dict[str, str]:
    """Built-in plug-ins and those installed through the ``mmjepa.modalities`` entry points."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value.split(":")[0])
    return found


def get_modality(name: str) -> type[Modality]:
    """Look a modality up by name, importing its plug-in module on first use."""
    if name not in _REGISTRY:
        module = _plugin_modules().get(name)
        if module is not None:
            importlib.import_module(module)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known: {registered_modalities()}") from None


def registered_modalities() -> list[str]:
    """Names of every available modality (built-in, installed and registered at run time)."""
    return sorted(set(_REGISTRY) | set(_plugin_modules()))


def modality_for_extension(ext: str, among: Sequence[str] | None = None) -> str | None:
    """The modality (of ``among``, default: every known one) whose plug-in decodes files ``*.ext``."""
    ext = ext.rsplit(".", 1)[-1].lower()
    for name in among if among is not None else registered_modalities():
        if ext in get_modality(name).extensions:
            return name
    return None


class GridPatchEmbed(nn.Module):
    """Shared part of the 2-D patch embeddings (image pixels, spectrograms): a strided ``proj`` conv
    over a (rows, cols) token grid plus fixed 2-D sin-cos positions.

    ``proj`` and ``pos_embed`` correspond 1:1 to ``patch_embed.proj`` and ``pos_embed`` of I-JEPA /
    timm ViTs (``pos_embed`` is a persistent buffer so a checkpoint's table is loaded as it is).
    Subclasses check their input's shape and call :meth:`tokens`.
    """

    def __init__(self, grid: tuple[int, int], in_channels: int, patch: int | tuple[int, int], dim: int,
                 add_positions: bool = True):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_tokens = self.grid[0] * self.grid[1]
        self.dim = dim
        self.add_positions = add_positions
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", self.position_table(dim).unsqueeze(0), persistent=True)  # (1, N, D)
        self.register_buffer("coords", self.grid_coords(), persistent=False)  # (N, 2) (row, col)

    def grid_coords(self) -> torch.Tensor:
        rows = torch.arange(self.grid[0]).repeat_interleave(self.grid[1])
        cols = torch.arange(self.grid[1]).repeat(self.grid[0])
        return torch.stack([rows, cols], 1)

    def position_table(self, dim: int) -> torch.Tensor:
        return sincos_2d(dim, *self.grid)  # (N, dim)

    def reset_buffers(self) -> None:
        """(Re)compute the fixed tables (called by weight init; a loaded ``pos_embed`` is kept)."""
        init.copy_(self.pos_embed, self.position_table(self.dim).unsqueeze(0))
        self.coords = self.grid_coords().to(self.pos_embed.device)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D) row-major patch tokens, positions added unless disabled."""
        x = self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.pos_embed if self.add_positions else x
