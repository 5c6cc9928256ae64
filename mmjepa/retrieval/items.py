"""Items to embed, from wherever they live, embedded in batches.

An item is a raw sample as the training pipeline sees it: a dict of fields keyed by file extension
or modality name (``{"__key__": "animals/cat", "png": b"...", "txt": b"a cat", "ogg": b"..."}``).

Design decisions:
- one reader per kind of input — a folder (files sharing a stem form one item), WebDataset shards,
  a CSV/JSONL manifest, strings, a built-in data set — each yielding raw samples; :func:`read_items`
  picks the reader from what the input is;
- decoding and processing are the training pipeline's own (``SampleProcessor`` in evaluation
  mode): an item is embedded exactly as the model saw such items in training;
- one gallery per modality: an item without modality m is simply not in m's gallery, an item
  whose m fails to decode is left out of it, counted, and named once in a warning;
- the embeddings are the model's ``embed`` (EMA target encoders by default, centred, L2-normalised).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm
from ..data import SampleProcessor
from ..data.sources import shard_urls, tar_samples
from ..datasets import load_builtin
from ..modalities import get_modality
from ..shards import MANIFEST, folder_samples, manifest_samples

KINDS = ("auto", "folder", "shards", "manifest", "builtin")


def shard_items(urls: str | Sequence[str]) -> Iterator[dict[str, Any]]:
    """Samples of WebDataset shards in order: a folder written by ``mmjepa shards`` (its
    manifest), its manifest file, a brace pattern (``data/shard-{000000..000009}.tar``) or a list."""
    if isinstance(urls, str) and Path(urls).is_dir() and not (Path(urls) / MANIFEST).is_file():
        raise ValueError(f"folder {urls} has no {MANIFEST}: give the .tar files (a brace pattern) instead")
    yield from tar_samples(shard_urls(urls)[0])


def detect_kind(source: str) -> str:
    """What ``source`` is: ``builtin`` (``builtin:NAME[:SPLIT]``), ``shards`` (a folder with a shard
    manifest, ``.tar`` files or a brace pattern), ``manifest`` (``.csv`` / ``.jsonl``) or ``folder``."""
    if source.startswith("builtin:"):
        return "builtin"
    p = Path(source)
    if p.is_dir():
        return "shards" if (p / MANIFEST).is_file() else "folder"
    if "{" in source or source.endswith(".tar") or "://" in source:
        return "shards"
    if p.suffix.lower() in (".csv", ".jsonl"):
        if not p.is_file():
            raise FileNotFoundError(f"no such manifest: {source}")
        return "manifest"
    raise FileNotFoundError(f"no such folder or file: {source} (give a folder, shards, a .csv/.jsonl manifest "
                            "or builtin:NAME)")


def read_items(source: str, kind: str = "auto", text_lines: str = "all",
               text_columns: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Raw items of ``source`` (see :func:`detect_kind`). Folder items are keyed by their path
    relative to the folder without extension (``animals/cat``); ``text_lines="first"`` keeps only a
    text file's first line (Tux Paint: the English caption); ``text_columns``: the manifest
    columns whose strings are an item's text (``mmjepa embed`` passes text, caption, sentence and
    transcription)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    kind = detect_kind(source) if kind == "auto" else kind
    if kind == "builtin":
        _, name, *split = source.split(":")
        yield from load_builtin(name, split[0] if split else "test")
    elif kind == "shards":
        yield from shard_items(source)
    elif kind == "manifest":
        yield from manifest_samples(source, text_lines, text_columns)
    else:
        yield from folder_samples(source, text_lines, keep_paths=True)


def string_modality(model: Any) -> str:
    """The model's modality whose raw values are plain strings (its plug-in ``takes_strings``)."""
    found = [m for m in model.modality_names if get_modality(m).takes_strings]
    if not found:
        raise ValueError(f"the model's modalities {model.modality_names} take no strings (no text modality)")
    return found[0]


def string_items(strings: Iterable[str], modality: str) -> Iterator[dict[str, Any]]:
    """Strings as items of ``modality`` (see :func:`string_modality`), each keyed by itself."""
    for t in strings:
        yield {"__key__": t, modality: t}


def item_label(item: dict[str, Any]) -> int | None:
    """An item's class label (``label`` / ``cls`` field), or None."""
    v = item.get("label", item.get("cls"))
    if isinstance(v, (bytes, bytearray)):
        v = v.decode().strip()
    try:
        return None if v is None else int(v)
    except ValueError:
        return None


@dataclass
class Embedded:
    """What :func:`embed_items` returns: per modality the keys (and labels, None where an item has
    none) of the items embedded, their embeddings (N, D) float32 on the CPU; the items read, those
    skipped whole, and per modality those that lost only it (it failed to decode)."""

    keys: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[int | None]] = field(default_factory=dict)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    predicted: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)  # (from, to) -> (N_from, D)
    items: int = 0
    skipped: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # items kept for other modalities, by the one lost


@torch.no_grad()
def embed_items(model: Any, items: Iterable[dict[str, Any]], modalities: Sequence[str] | None = None,
                batch_size: int = 64, use_target: bool = True, progress: bool = True,
                total: int | None = None, predict: bool | Sequence[str] = False) -> Embedded:
    """Embed every modality in ``modalities`` (default: all of the model's) of each raw item, in
    batches of ``batch_size`` per modality. Items that hold none of them, or fail to decode,
    are skipped and counted (the first failure is named in a warning). ``predict``: also predict,
    from each item's modality alone, the embedding of every other modality (``True``) or of the
    modalities it lists (``predicted``; the model needs a ``pooled`` objective)."""
    names = list(modalities or model.modality_names)
    unknown = sorted(set(names) - set(model.modality_names))
    if unknown:
        raise ValueError(f"the model has no {unknown} modality (it has {model.modality_names})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    proc = SampleProcessor(model.config, require=[], only=names)
    device = next(model.parameters()).device
    out = Embedded(**{f: {m: [] for m in names} for f in ("keys", "labels", "embeddings")})
    pending: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
    targets = list(names if predict is True else predict or [])
    if set(targets) - set(model.modality_names):
        raise ValueError(f"cannot predict {sorted(set(targets) - set(model.modality_names))}: the model has "
                         f"{model.modality_names}")
    was_training = model.training
    model.eval()

    def flush(m: str) -> None:
        samples, pending[m] = pending[m], []
        if not samples:
            return
        plugin = get_modality(m)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in plugin.collate(samples, model.config.modality_config(m)).items()}
        out.embeddings[m].append(model.embed(use_target=use_target, **batch)[m].float().cpu())
        for t in targets:
            if t != m:
                out.predicted.setdefault((m, t), []).append(model.predict_embedding(t, **batch).float().cpu())

    try:
        for raw in tqdm(items, desc="embedding", unit=" items", total=total, disable=not progress):
            out.items += 1
            try:
                sample = proc(raw)
            except Exception as err:  # noqa: BLE001 - one bad item is skipped, counted and named once
                out.skipped += 1
                if out.skipped == 1:
                    warnings.warn(f"skipping item {raw.get('__key__', '?')!r} (and any later one that fails, "
                                  f"counted): {type(err).__name__}: {err}")
                continue
            for m in names:
                if get_modality(m).input_key in sample:
                    pending[m].append(sample)
                    out.keys[m].append(str(raw.get("__key__", out.items - 1)))
                    out.labels[m].append(item_label(raw))
                    if len(pending[m]) == batch_size:
                        flush(m)
        for m in names:
            flush(m)
    finally:
        model.train(was_training)
    dim = model.config.hidden_size
    out.embeddings = {m: torch.cat(e) if e else torch.zeros(0, dim) for m, e in out.embeddings.items()}
    out.predicted = {mt: torch.cat(e) for mt, e in out.predicted.items()}
    out.dropped = dict(proc.dropped)
    return out
