"""``MMJepaProcessor``: one object that prepares images, audio and text for the model."""

from __future__ import annotations

from typing import Any

from .config import MMJepaConfig
from .modalities import get_modality


class MMJepaProcessor:
    """Holds one processor per modality and routes inputs to them.

    ``MMJepaProcessor.from_config(config)`` builds the processors that ``config`` describes;
    ``processor(images=..., text=..., audio=..., sampling_rate=...)`` returns the model inputs.
    """

    ARG_TO_MODALITY = {"images": "image", "audio": "audio", "text": "text"}

    def __init__(self, processors: dict[str, Any]):
        self.processors = dict(processors)

    @classmethod
    def from_config(cls, config: MMJepaConfig, **processors: Any) -> "MMJepaProcessor":
        built = {}
        for name in config.modalities:
            built[name] = processors.get(name) or get_modality(name).build_processor(config.modality_config(name))
        return cls(built)

    def __call__(self, images: Any = None, text: Any = None, audio: Any = None, sampling_rate: int | None = None,
                 return_tensors: str | None = "pt", **kwargs: Any) -> dict[str, Any]:
        given = {"image": images, "text": text, "audio": audio}
        out: dict[str, Any] = {}
        for name, value in given.items():
            if value is None:
                continue
            if name not in self.processors:
                raise ValueError(f"this processor has no {name} processor (it has {sorted(self.processors)})")
            if name == "audio":
                out.update(self.processors[name](value, sampling_rate=sampling_rate, **kwargs))
            else:
                out.update(self.processors[name](value))
        if not out:
            raise ValueError("give at least one of images=, text=, audio=")
        return out
