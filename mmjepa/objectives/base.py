"""The objective interface and its registry.

An objective is a registered ``nn.Module`` that turns one batch's latents into a loss. It reads
them through a :class:`LatentView` (the model computes each piece once, on first request, and
shares it between objectives), and returns an :class:`ObjectiveOutput`: its loss (unweighted),
named terms (logged as ``loss/<term>``) and monitors. ``MMJepaModel.forward`` sums
``weight * loss`` over the objectives its config names; nothing else in the model knows them.

An objective's options are a dataclass (``config_class``, at least ``type`` and ``weight``),
stored as a plain dict under ``MMJepaConfig.objectives[<name>]``; ``type`` picks the registered
class and defaults to ``<name>``, so one type can appear twice under two names (e.g. a readout
per modality). Objectives that need every rank's embeddings (contrastive losses) gather them
themselves, so the trainer never changes for a new objective.

The built-in objectives register when this package is imported; an installed package can add its
own through the ``mmjepa.objectives`` entry-point group (``name = "package.module"``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..layers import masked_mean
from ..options import options_from_dict

_REGISTRY: dict[str, type["Objective"]] = {}
ENTRY_POINT_GROUP = "mmjepa.objectives"


@dataclass
class ObjectiveConfig:
    """Options every objective has: the registered ``type`` and the ``weight`` of its loss."""

    type: str = ""
    weight: float = 1.0

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


@dataclass
class ObjectiveOutput:
    """``loss``: the objective's scalar loss (before its weight); ``terms``: named parts of it, for
    logging; ``metrics``: monitors (no gradient)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class LatentView(Protocol):
    """What an objective sees of one batch (implemented by ``mmjepa.models.model.JepaView``).

    Modalities are named by their plug-in names; every method computes on first use and caches.
    """

    config: Any  # the MMJepaConfig
    predictor: Any  # the model's predictor (mmjepa.models.predictor.Predictor)
    inputs: dict[str, torch.Tensor]  # modality -> model input (Bm, ...): the Bm samples that hold it
    masks: dict[str, dict[str, torch.Tensor]]  # modality -> mask set (context, target, validity)
    mask_sets: int  # R mask sets per sample (config.mask_sets); ``masks`` and the defaults show the first
    present: dict[str, torch.Tensor]  # modality -> (Bm,) positions of its samples in the batch
    batch_size: int  # B, the samples of the batch
    batch: dict[str, Any]  # the whole batch (validity masks, labels ...)

    def valid(self, modality: str) -> torch.Tensor | None:
        """(Bm, N) bool real-token mask of a modality's full input, or None."""

    def rows(self, modality: str, samples: torch.Tensor) -> torch.Tensor:
        """Positions of ``samples`` (batch indices) in ``modality``'s tensors; -1 where absent."""

    def context(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Context-encoder latents of the visible tokens: z (Bm, Kc, D), idx (Bm, Kc), valid (Bm, Kc) or None."""

    def aligned_context(self, modality: str, samples: torch.Tensor,
                        full: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`context` (``full``: :meth:`encoded`) for ``samples`` (R,) batch indices (all-invalid
        rows where absent)."""

    def encoded(self, modality: str) -> torch.Tensor:
        """The context encoder on every token (Bm, N, D), with gradients: the unmasked view."""

    def target_latents(self, modality: str) -> torch.Tensor:
        """EMA-target latents of every token (Bm, N, D), not normalised; no gradient."""

    def pooled_target(self, modality: str) -> torch.Tensor:
        """Their mean over real tokens (Bm, D), as ``model.embed`` pools them; no gradient."""

    def center(self, modality: str) -> torch.Tensor:
        """The running centre (D,) that ``model.embed`` subtracts from the pooled embedding."""

    def token_embeddings(self, modality: str) -> torch.Tensor:
        """The context encoder's token-embedding table (V, D) of a discrete-token modality, with gradients."""

    def targets(self, modality: str, all_sets: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer-normed EMA-target latents at the target indices, (Bm*M, Kt, D) sample-major, and their
        validity (Bm*M, Kt) or None; no gradient. ``all_sets``: of all R mask sets, (Bm*R*M, Kt, D)
        ordered sample, set, group (the EMA target still runs once per sample)."""

    def query_latents(self, modality: str, all_sets: bool = False) -> torch.Tensor | None:
        """For a modality whose context encoder sees mask tokens (``config.context_mask_tokens``): its
        latents at the target indices, (Bm*M, Kt, D) (``all_sets``: (Bm*R*M, Kt, D)), which the
        predictor starts its queries from and adds to its output; None for any other modality."""

    def predictions(self, modality: str, all_context: bool = False, all_sets: bool = False) -> torch.Tensor:
        """The predictor's latents for the target indices, (Bm*M, Kt, D), from the modality's own
        context (``all_context``: from the context of every modality each sample holds);
        ``all_sets``: of all R mask sets, (Bm*R*M, Kt, D), rows as :meth:`targets`."""


class Objective(nn.Module):
    """Base class of an objective (see the module docstring)."""

    name: ClassVar[str]
    config_class: ClassVar[type] = ObjectiveConfig

    def __init__(self, cfg: Any, model_config: Any):
        super().__init__()
        self.cfg = cfg
        self.weight = float(cfg.weight)

    @classmethod
    def make_config(cls, opts: dict[str, Any] | None = None) -> Any:
        """Dict -> the objective's config dataclass, rejecting unknown keys."""
        return options_from_dict(cls.config_class, {"type": cls.name, **(opts or {})}, f"{cls.name} objective")

    @classmethod
    def validate(cls, cfg: Any, model_config: Any) -> None:
        """Raise ValueError when a model of ``model_config`` cannot serve this objective (called by
        ``MMJepaConfig`` when it is built). Default: no further check."""

    def forward(self, view: LatentView) -> ObjectiveOutput | None:  # pragma: no cover - interface
        """The loss on one batch, or None when the batch holds nothing this objective uses."""
        raise NotImplementedError


VIEWS = ("full", "masked")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """ValueError naming the option when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def pooled_context(view: LatentView, modality: str, full: bool = True) -> torch.Tensor:
    """A modality's embedding as the context encoder sees it (Bm, D), with gradients: the mean of
    its latents over every real token (``full``, the unmasked view) or over the visible tokens of
    its intra-modal mask."""
    if full:
        return masked_mean(view.encoded(modality), view.valid(modality))
    z, _, valid = view.context(modality)
    return masked_mean(z, valid)


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its ``name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"objective {cls.__name__} must define a name")
    _REGISTRY[cls.name] = cls
    return cls


def _installed() -> dict[str, str]:
    """Objectives of installed packages: the ``mmjepa.objectives`` entry points (name -> module)."""
    return {ep.name: ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_objective(type_name: str) -> type[Objective]:
    """The objective class registered as ``type_name`` (importing an installed plug-in on first use)."""
    if type_name not in _REGISTRY and type_name in _installed():
        importlib.import_module(_installed()[type_name])
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise ValueError(f"unknown objective type {type_name!r}; registered: {registered_objectives()}") from None


def registered_objectives() -> list[str]:
    return sorted(set(_REGISTRY) | set(_installed()))


def objective_config(name: str, opts: dict[str, Any] | None) -> Any:
    """The typed config of the objective entry ``name`` (its ``type`` defaults to ``name``)."""
    opts = dict(opts or {})
    cls = get_objective(opts.get("type") or name)
    opts["type"] = cls.name
    return cls.make_config(opts)


def build_objectives(model_config: Any) -> nn.ModuleDict:
    """One module per entry of ``model_config.objectives``, in order."""
    out = {}
    for name, opts in model_config.objectives.items():
        cfg = objective_config(name, opts)
        out[name] = get_objective(cfg.type)(cfg, model_config)
    return nn.ModuleDict(out)
