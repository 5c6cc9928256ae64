"""``mmjepa shards``: build WebDataset tar shards (+ a manifest of sample counts) from a folder, a
CSV/JSONL manifest or a Hugging Face dataset.

A sample is a dict of fields keyed by file extension plus ``__key__``: the extensions that the
modality plug-ins decode (``jpg``/``png``/``webp`` ..., ``wav``/``flac``/``ogg``, ``txt``, and those of any
plug-in you register) and the metadata ``json`` and ``cls``. The shards are written with
webdataset's ``ShardWriter``; ``manifest.json`` beside them lists every shard with its sample
count, which the training pipeline uses for exact epoch accounting::

    mmjepa shards folder $MMJEPA_DATA_DIR/tuxpaint out/tux --max-count 200 --text-lines first
    mmjepa shards csv pairs.csv out/pairs            # columns: image, audio, text, label, key
    mmjepa shards hf user/dataset out/ds --split train
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import webdataset as wds
from PIL import Image
from tqdm.auto import tqdm

from .modalities import get_modality, modality_for_extension, registered_modalities

META_EXTS = ("json", "cls")
ALIASES = {"jpeg": "jpg", "tif": "tiff"}  # one spelling per format in the shards
MANIFEST = "manifest.json"
# leading bytes of the media formats a Hugging Face column may hold without a file name
MAGIC = [(b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"fLaC", "flac"), (b"OggS", "ogg"),
         (b"ID3", "mp3"), (b"\xff\xfb", "mp3")]


def field_extensions() -> set[str]:
    """Every extension a shard field may have: those the modality plug-ins decode, and metadata."""
    return {e for m in registered_modalities() for e in get_modality(m).extensions} | set(META_EXTS)


def sniff_extension(data: bytes) -> str | None:
    """The file extension of encoded media bytes, from their leading bytes (None when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"WEBP"):
        return "wav" if data[8:12] == b"WAVE" else "webp"
    return next((ext for magic, ext in MAGIC if data.startswith(magic)), None)


def sanitize_key(key: str) -> str:
    """A WebDataset key may not contain dots (they start the extension) nor slashes."""
    return re.sub(r"[./\\\s]+", "_", key).strip("_") or "sample"


def _ext(path: str | Path) -> str:
    e = Path(path).suffix.lower().lstrip(".")
    return ALIASES.get(e, e)


def _text(raw: str, lines: str) -> str:
    raw = raw.replace("\r\n", "\n").strip()
    return raw.split("\n", 1)[0].strip() if lines == "first" else raw


# ----------------------------------------------------------------------------- sample readers
def folder_samples(root: str | Path, text_lines: str = "all", keep_paths: bool = False) -> Iterator[dict[str, Any]]:
    """Files sharing a stem (``x.jpg`` + ``x.txt`` + ``x.wav``) form one sample, in sorted order.

    Files in sub-folders keep their relative path in the key (``a/x.jpg`` -> key ``a_x``, or
    ``a/x`` with ``keep_paths``: not a valid shard key, but the item's name); files with other
    extensions are ignored; a stem with two files of one kind keeps the first.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    known = field_extensions()
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        ext = _ext(path)
        if not path.is_file() or ext not in known:
            continue
        stem = path.relative_to(root).with_suffix("").as_posix()
        groups.setdefault(stem, {}).setdefault(ext, path)
    for stem in sorted(groups):
        sample: dict[str, Any] = {"__key__": stem if keep_paths else sanitize_key(stem)}
        for ext, path in groups[stem].items():
            data = path.read_bytes()
            sample[ext] = _text(data.decode("utf-8"), text_lines).encode("utf-8") if ext == "txt" else data
        yield sample


def _value_to_fields(name: str, value: Any, base: Path, text_lines: str,
                     text_columns: Sequence[str]) -> dict[str, bytes]:
    """One manifest cell -> tar fields: an existing media file is stored by its extension; ``text``
    / ``caption`` strings become ``txt``; ``label`` ints become ``cls``; the rest goes to ``json``."""
    if value is None or (isinstance(value, str) and value == ""):
        return {}
    if isinstance(value, str):
        path = Path(value) if os.path.isabs(value) else base / value
        if _ext(path) in field_extensions() and path.is_file():
            data = path.read_bytes()
            if _ext(path) == "txt":
                data = _text(data.decode("utf-8"), text_lines).encode("utf-8")
            return {_ext(path): data}
    if name in text_columns:
        return {"txt": _text(str(value), text_lines).encode("utf-8")}
    if name in ("label", "cls"):
        return {"cls": str(int(value)).encode("utf-8")}
    return {}


def manifest_samples(path: str | Path, text_lines: str = "all",
                     text_columns: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL file; paths are relative to the manifest's folder.

    Columns: media columns hold file paths (any name; stored by the file's extension), the
    ``text_columns`` hold a sample's text (stored as ``txt``), ``label`` an int, ``key``/``__key__``
    the sample key (default: the row number); every other column is kept in the sample's ``json`` field.
    """
    path = Path(path)
    base = path.parent
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows: Iterable[dict[str, Any]] = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        raise ValueError(f"manifest must be .csv or .jsonl, got {path}")
    for i, row in enumerate(rows):
        key = row.get("__key__", row.get("key", f"{i:08d}"))
        sample: dict[str, Any] = {"__key__": sanitize_key(str(key))}
        meta = {}
        for name, value in row.items():
            if name in ("key", "__key__"):
                continue
            fields = _value_to_fields(name, value, base, text_lines, text_columns)
            if fields:
                sample.update(fields)
            elif value not in (None, ""):
                meta[name] = value
        if meta:
            sample["json"] = json.dumps(meta).encode("utf-8")
        yield sample


def _encode_hf_value(name: str, value: Any, text_lines: str, text_columns: Sequence[str]) -> dict[str, bytes]:
    """A decoded Hugging Face cell -> tar fields (PIL image -> png, audio dict -> wav/flac, ...)."""
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return {"png": buf.getvalue()}
    if isinstance(value, dict) and value.get("bytes") is not None:  # undecoded Image/Audio feature
        ext = _ext(value.get("path") or "")
        if ext not in field_extensions():
            ext = sniff_extension(value["bytes"])
        if ext is None:
            raise ValueError(f"column {name!r}: cannot tell the format of its bytes (no file name, unknown header)")
        return {ext: value["bytes"]}
    if isinstance(value, dict) and "array" in value and "sampling_rate" in value:
        buf = io.BytesIO()
        sf.write(buf, np.asarray(value["array"], dtype="float32"), int(value["sampling_rate"]), format="FLAC")
        return {"flac": buf.getvalue()}
    if isinstance(value, str) and name in text_columns:
        return {"txt": _text(value, text_lines).encode("utf-8")}
    if isinstance(value, (int,)) and not isinstance(value, bool) and name in ("label", "labels", "cls"):
        return {"cls": str(value).encode("utf-8")}
    return {}


def hf_samples(name: str, split: str = "train", config: str | None = None, text_lines: str = "all",
               text_columns: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a Hugging Face dataset (hub name, local builder folder, or a ``save_to_disk`` folder)."""
    import datasets  # imported only by the runs that read a Hugging Face dataset (a second of start-up)

    local = Path(name)
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for i, row in enumerate(ds):
        key = row.get("__key__", row.get("key", row.get("id", f"{i:08d}")))
        sample: dict[str, Any] = {"__key__": sanitize_key(str(key))}
        meta = {}
        for col, value in row.items():
            if col in ("__key__", "key", "id"):
                continue
            fields = _encode_hf_value(col, value, text_lines, text_columns)
            if fields:
                sample.update(fields)
            elif isinstance(value, (str, int, float, bool)) or value is None:
                meta[col] = value
        if meta:
            sample["json"] = json.dumps(meta).encode("utf-8")
        yield sample


# ----------------------------------------------------------------------------- writing
@dataclass
class ShardStats:
    """What was written: shard file names (relative to the output folder) with sample counts."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    skipped: int = 0
    fields: dict[str, int] = field(default_factory=dict)


def write_shards(samples: Iterable[dict[str, Any]], out_dir: str | Path, prefix: str = "shard",
                 max_count: int = 10000, max_size: float = 1e9, require: tuple[str, ...] = (),
                 progress: bool = True) -> ShardStats:
    """Write ``samples`` into ``out_dir/{prefix}-000000.tar ...`` and ``out_dir/manifest.json``.

    ``require`` lists modalities (``image``, ``audio``, ``text`` ...) every sample must have a field
    of; samples without them are skipped and counted.
    """
    if max_count < 1 or max_size <= 0:
        raise ValueError("--max-count and --max-size must be positive")
    for r in require:
        get_modality(r)  # unknown -> ValueError naming the known ones
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = ShardStats()
    counts: dict[str, int] = {}
    seen: set[str] = set()
    writer = None
    bar = tqdm(samples, desc="shards", unit=" samples", disable=not progress)
    try:
        for sample in bar:
            held = {modality_for_extension(k) for k in sample if k != "__key__"}
            if any(r not in held for r in require) or len(sample) <= 1:
                stats.skipped += 1
                continue
            key = sample["__key__"]
            if key in seen:  # duplicate keys would merge samples when read back
                suffix = 1
                while f"{key}_{suffix}" in seen:
                    suffix += 1
                key = f"{key}_{suffix}"
                sample = {**sample, "__key__": key}
            seen.add(key)
            if writer is None:  # opened lazily so that no empty shard is left behind
                writer = wds.ShardWriter(str(out_dir / f"{prefix}-%06d.tar"), maxcount=max_count,
                                         maxsize=max_size, verbose=0)
            writer.write(sample)
            counts[writer.fname] = writer.count
            stats.total += 1
            for k in sample:
                if k != "__key__":
                    stats.fields[k] = stats.fields.get(k, 0) + 1
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    if stats.total == 0:
        raise ValueError("no samples found: nothing was written")
    stats.shards = [{"url": Path(f).name, "count": n, "bytes": Path(f).stat().st_size} for f, n in counts.items()]
    manifest = {"format": "mmjepa-shards/1", "total": stats.total, "skipped": stats.skipped,
                "fields": stats.fields, "shards": stats.shards}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / MANIFEST)
    return stats


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load ``manifest.json`` (or the one inside a folder) with shard urls made absolute."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    manifest = json.loads(path.read_text())
    for s in manifest["shards"]:
        if "://" not in s["url"] and not s["url"].startswith("pipe:") and not os.path.isabs(s["url"]):
            s["url"] = str(path.parent / s["url"])
    return manifest


def run(args: argparse.Namespace) -> int:
    """``mmjepa shards`` with parsed arguments (see ``mmjepa_cli``)."""
    if args.source == "folder":
        samples = folder_samples(args.input, args.text_lines)
    elif args.source in ("csv", "jsonl"):
        samples = manifest_samples(args.input, args.text_lines, args.text_columns.split(","))
    else:
        samples = hf_samples(args.input, args.split, args.config, args.text_lines, args.text_columns.split(","))
    require = tuple(r for r in args.require.split(",") if r)
    stats = write_shards(samples, args.output, args.prefix, args.max_count, args.max_size, require,
                         progress=not args.quiet)
    print(f"wrote {stats.total} samples in {len(stats.shards)} shards to {args.output} "
          f"(skipped {stats.skipped}); fields: {stats.fields}")
    return 0
