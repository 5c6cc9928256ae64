"""Decode and process one raw sample: find each modality's field, decode its bytes with the
modality's plug-in (chosen by file extension), run the modality's processor.

A raw sample is a dict of fields (``{"__key__": ..., "png": b"...", "txt": b"...", "cls": b"3"}``
from shards, or already-decoded values from the built-in datasets). Fields are matched to a
modality by its name, its plug-in's file extensions and the recipe's ``data.keys``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..modalities import get_modality, modality_for_extension

META_EXTS = ("json", "cls")  # sample metadata, not a modality


def decode_meta(ext: str, value: Any) -> Any:
    """Bytes of a metadata field (``json``, ``cls``) -> a Python object (other values pass through)."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    ext = ext.rsplit(".", 1)[-1].lower()
    if ext == "json":
        return json.loads(value)
    if ext == "cls":
        return int(value.decode().strip())
    return value


def field_extension(key: str) -> str:
    return key.rsplit(".", 1)[-1].lower()


class SampleProcessor:
    """find -> decode -> process, for one raw sample, for every modality of a model config.

    ``keys`` maps a modality to extra ``;``-separated field names; the modality's own name and its
    plug-in's extensions are always candidates. A sample must hold every modality of the model.
    """

    def __init__(self, model_config: Any, keys: dict[str, str] | None = None):
        keys = keys or {}
        self.modalities = list(model_config.modalities)
        self.configs = {m: model_config.modality_config(m) for m in self.modalities}
        self.plugins = {m: get_modality(m) for m in self.modalities}
        self.processors = {m: self.plugins[m].build_processor(self.configs[m]) for m in self.modalities}
        self.candidates = {m: [m, *self.plugins[m].extensions, *(k for k in keys.get(m, "").split(";") if k)]
                           for m in self.modalities}

    def find(self, sample: dict[str, Any], modality: str) -> tuple[str, Any] | None:
        """The (field name, raw value) holding ``modality`` in ``sample``, or None."""
        for cand in self.candidates[modality]:
            for k, v in sample.items():
                if k.lower() == cand or k.lower().endswith("." + cand):
                    return k, v
        return None

    def ignored_fields(self, sample: dict[str, Any]) -> dict[str, str]:
        """Fields of ``sample`` that hold a modality the model does not use: {field: modality}."""
        used = {self.find(sample, m)[0] for m in self.modalities if self.find(sample, m) is not None}
        out = {}
        for k in sample:
            if k.startswith("__") or k in used:
                continue
            other = modality_for_extension(field_extension(k))
            if other is not None and other not in self.modalities:
                out[k] = other
        return out

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"__key__": str(sample.get("__key__", ""))}
        for m in self.modalities:
            found = self.find(sample, m)
            if found is None:
                raise ValueError(f"sample has no {m} (fields: {sorted(k for k in sample if not k.startswith('__'))})")
            k, value = found
            if isinstance(value, (bytes, bytearray)):
                value = self.plugins[m].decode(bytes(value), field_extension(k), self.configs[m])
            for name, v in self.processors[m](value).items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1:
                    v = v[0]  # the processor's batch of one
                out[name] = v
        label = sample.get("label", sample.get("cls"))
        if label is not None:
            label = decode_meta("cls", label)
            if isinstance(label, int):
                out["label"] = label
        return out
