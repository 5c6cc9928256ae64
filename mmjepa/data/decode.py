"""Decode and process one raw sample: find each modality's field, decode its bytes with the
modality's plug-in (chosen by file extension), run the modality's processor.

A raw sample is a dict of fields (``{"__key__": ..., "png": b"...", "txt": b"...", "cls": b"3"}``
from shards, or already-decoded values from the built-in datasets). Fields are matched to a
modality by its name, its plug-in's file extensions and the recipe's ``data.keys``.
"""

from __future__ import annotations

import collections
import json
import warnings
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
    plug-in's extensions are always candidates. A sample must hold the modalities of ``require``
    (default: every modality of the model) and at least one of the model's. A modality outside
    ``require`` that fails to decode or process is dropped from its sample (the rest is kept),
    counted in ``dropped`` and reported once. ``only`` limits the work to some of the model's
    modalities (the others are ignored).
    """

    def __init__(self, model_config: Any, keys: dict[str, str] | None = None, require: list[str] | None = None,
                 train: bool = False, only: list[str] | None = None):
        keys = keys or {}
        self.modalities = list(only or model_config.modalities)
        self.required = list(self.modalities if require is None else require)
        unknown = sorted(set(self.required) - set(self.modalities))
        if unknown:
            raise ValueError(f"data.require names {unknown}, which the model does not have (it has {self.modalities})")
        self.configs = {m: model_config.modality_config(m) for m in self.modalities}
        self.plugins = {m: get_modality(m) for m in self.modalities}
        self.processors = {m: self.plugins[m].build_processor(self.configs[m], train=train) for m in self.modalities}
        self.candidates = {m: [m, *self.plugins[m].extensions, *(k for k in keys.get(m, "").split(";") if k)]
                           for m in self.modalities}
        self.dropped: collections.Counter[str] = collections.Counter()

    def find(self, sample: dict[str, Any], modality: str) -> tuple[str, Any] | None:
        """The (field name, raw value) holding ``modality`` in ``sample``, or None (a None value is absent)."""
        for cand in self.candidates[modality]:
            for k, v in sample.items():
                if v is not None and (k.lower() == cand or k.lower().endswith("." + cand)):
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

    def _process(self, m: str, key: str, value: Any, generator: torch.Generator | None) -> dict[str, Any]:
        if isinstance(value, (bytes, bytearray)):
            value = self.plugins[m].decode(bytes(value), field_extension(key), self.configs[m])
        proc = self.processors[m]
        extra = {"generator": generator} if getattr(proc, "augments", False) and generator is not None else {}
        out = {}
        for name, v in proc(value, **extra).items():
            out[name] = v[0] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1 else v  # unbatch
        return out

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"__key__": str(sample.get("__key__", ""))}
        held = 0
        for m in self.modalities:
            found = self.find(sample, m)
            if found is None:
                if m in self.required:
                    raise ValueError(f"sample has no {m} (fields: {sorted(k for k in sample if not k.startswith('__'))})")
                continue
            try:
                processed = self._process(m, *found, generator)
            except Exception as err:  # noqa: BLE001 - an optional modality's failure drops it alone
                if m in self.required:
                    raise
                self.dropped[m] += 1
                if self.dropped[m] == 1:
                    warnings.warn(f"dropping the {m} of sample {sample.get('__key__', '?')!r} (and any later "
                                  f"{m} that fails, counted): {type(err).__name__}: {err}")
                continue
            held += 1
            out.update(processed)
        if not held:
            raise ValueError(f"sample holds none of the model's modalities {self.modalities} "
                             f"(fields: {sorted(k for k in sample if not k.startswith('__'))})")
        label = sample.get("label", sample.get("cls"))
        if label is not None:
            label = decode_meta("cls", label)
            if isinstance(label, int):
                out["label"] = label
        return out
