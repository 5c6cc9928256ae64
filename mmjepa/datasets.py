"""Small real datasets built in for the demo, tests and benchmarks (no download needed).

Samples are plain dicts keyed by modality (``image``, ``audio``, ``text``) plus metadata
(``label``, ``__key__``) — the same shape the WebDataset pipeline produces after decoding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf


def shared_data_dir(required: bool = True) -> Path | None:
    """The folder of real data sets: ``$MMJEPA_DATA_DIR``, else ``../shared/data`` beside the checkout."""
    candidates = []
    if os.environ.get("MMJEPA_DATA_DIR"):
        candidates.append(Path(os.environ["MMJEPA_DATA_DIR"]))
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    if required:
        raise FileNotFoundError(
            "no data folder found: set MMJEPA_DATA_DIR to the folder that holds fsdd/, tinyshakespeare/, "
            "tuxpaint/ ... (docs/data.md says where to get each)"
        )
    return None


def digits(split: str = "train", test_fraction: float = 0.3, seed: int = 0) -> list[dict[str, Any]]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as uint8 images 0..255.

    A fixed stratified split: ``train`` (70%) and ``test`` (30%).
    """
    # scikit-learn is imported by the runs that use these digits only (over a second of start-up)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = load_digits()
    images = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (n, 8, 8)
    labels = data.target.astype(int)
    idx = np.arange(len(labels))
    if split != "all":
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
        idx = np.sort(tr if split == "train" else te)
    return [{"__key__": f"digits-{i:04d}", "image": images[i], "label": int(labels[i])} for i in idx]


def fsdd(split: str = "train") -> list[dict[str, Any]]:
    """Free Spoken Digit Dataset: 3,000 recordings (8 kHz mono) of the digits 0-9 by 6 speakers.

    The official split: ``test`` holds takes 0-4 of every speaker and digit (300 clips), ``train``
    takes 5-49 (2,700). Samples: ``audio`` = ``{"array": float32 waveform in [-1, 1],
    "sampling_rate": 8000}`` (the form the data pipeline decodes audio to, which the audio processor
    takes as it is), ``sampling_rate`` (again), ``label`` (the digit), ``speaker``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    folder = shared_data_dir() / "fsdd" / "recordings"
    if not folder.is_dir():
        raise FileNotFoundError(f"FSDD recordings not found in {folder}")
    out = []
    for path in sorted(folder.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        if split == "test" and int(take) > 4 or split == "train" and int(take) <= 4:
            continue
        audio, sr = sf.read(path, dtype="float32")
        out.append({"__key__": f"fsdd-{path.stem}", "audio": {"array": audio, "sampling_rate": int(sr)},
                    "sampling_rate": int(sr), "label": int(digit), "speaker": speaker})
    return out


def shakespeare_text(split: str = "train", held_out: float = 0.1) -> str:
    """Tiny Shakespeare as one string: ``train`` is the first 90%, ``test`` the last 10%, split on
    the first line boundary at or after 90% of the characters."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    path = shared_data_dir() / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")
    if split == "all":
        return text
    cut = text.index("\n", int(len(text) * (1.0 - held_out))) + 1
    return text[:cut] if split == "train" else text[cut:]


def shakespeare(split: str = "train", chunk_chars: int = 350) -> list[dict[str, Any]]:
    """Tiny Shakespeare (train: first 90%, test: last 10%, split on a line boundary) as ``text``
    samples of whole lines, each about ``chunk_chars`` characters long."""
    text = shakespeare_text(split)
    out, buf, size = [], [], 0
    for line in text.splitlines(keepends=True):
        buf.append(line)
        size += len(line)
        if size >= chunk_chars:
            out.append("".join(buf))
            buf, size = [], 0
    if buf:
        out.append("".join(buf))
    return [{"__key__": f"shakespeare-{split}-{i:05d}", "text": t} for i, t in enumerate(out)]


BUILTIN = {"digits": digits, "fsdd": fsdd, "shakespeare": shakespeare}


def load_builtin(name: str, split: str = "train", **kwargs: Any) -> list[dict[str, Any]]:
    """A built-in dataset by name (``digits`` ...) as a list of sample dicts."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in dataset {name!r}; available: {sorted(BUILTIN)}")
    return BUILTIN[name](split=split, **kwargs)
