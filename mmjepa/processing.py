"""``MMJepaProcessor``: one object that prepares every modality of a model for it.

Each modality plug-in names its keyword (``images=``, ``text=``, ``audio=`` for the built-in
ones) and any extra keywords its processor takes (``sampling_rate=``); the processor routes them.
"""

from __future__ import annotations

from typing import Any

from .models import MMJepaConfig
from .modalities import get_modality, registered_modalities


class MMJepaProcessor:
    """Holds one processor per modality and routes inputs to them.

    ``MMJepaProcessor.from_config(config)`` builds the processors that ``config`` describes;
    ``processor(images=..., text=..., audio=..., sampling_rate=...)`` returns the model inputs.
    """

    def __init__(self, processors: dict[str, Any]):
        self.processors = dict(processors)
        self.plugins = {name: get_modality(name) for name in self.processors}
        self.arg_to_modality = {mod.processor_arg: name for name, mod in self.plugins.items()}

    @classmethod
    def from_config(cls, config: MMJepaConfig, **processors: Any) -> "MMJepaProcessor":
        """Processors for every modality of ``config``; ``processors`` (by modality name) replace built ones."""
        built = {}
        for name in config.modalities:
            built[name] = processors.get(name) or get_modality(name).build_processor(config.modality_config(name))
        return cls(built)

    def __call__(self, return_tensors: str | None = "pt", **inputs: Any) -> dict[str, Any]:
        extra_args = {k for mod in self.plugins.values() for k in mod.processor_kwargs}
        unknown = sorted(set(inputs) - set(self.arg_to_modality) - extra_args)
        if unknown:
            elsewhere = {get_modality(m).processor_arg: m for m in registered_modalities()}
            other = [f"{a}= ({elsewhere[a]})" for a in unknown if a in elsewhere]
            if other:
                raise ValueError(f"this processor has no {', '.join(other)} modality; it has "
                                 f"{', '.join(f'{a}= ({m})' for a, m in self.arg_to_modality.items())}")
            raise ValueError(f"unknown argument(s) {unknown}; this processor takes "
                             f"{sorted(self.arg_to_modality)} (and {sorted(extra_args) or 'nothing else'})")
        out: dict[str, Any] = {}
        for arg, name in self.arg_to_modality.items():
            value = inputs.get(arg)
            if value is None:
                continue
            mod = self.plugins[name]
            kwargs = {k: inputs[k] for k in mod.processor_kwargs if inputs.get(k) is not None}
            out.update(self.processors[name](value, **kwargs))
        if not out:
            raise ValueError(f"give at least one of {', '.join(f'{a}=' for a in self.arg_to_modality)}")
        return out
