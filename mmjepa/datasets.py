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

from .download import ensure_fsdd


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

    Read from the data folder (:func:`shared_data_dir`) when it holds ``fsdd/recordings``; else
    downloaded once into the cache (:func:`mmjepa.download.ensure_fsdd`, 27 MB, checksummed).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root = shared_data_dir(required=False)
    if root is None or not (root / "fsdd" / "recordings").is_dir():
        root = ensure_fsdd()
    folder = root / "fsdd" / "recordings"
    out = []
    for path in sorted(folder.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        if split == "test" and int(take) > 4 or split == "train" and int(take) <= 4:
            continue
        audio, sr = sf.read(path, dtype="float32")
        out.append({"__key__": f"fsdd-{path.stem}", "audio": {"array": audio, "sampling_rate": int(sr)},
                    "sampling_rate": int(sr), "label": int(digit), "speaker": speaker})
    return out


def _line_cut(text: str, fraction: float) -> int:
    """The index just after the first line boundary at or after ``fraction`` of ``text``."""
    return text.index("\n", int(len(text) * fraction)) + 1


def shakespeare_text(split: str = "train", held_out: float = 0.1, validation: float = 0.0) -> str:
    """Tiny Shakespeare as one string: ``train`` is the first 90%, ``test`` the last 10%, split on
    the first line boundary at or after 90% of the characters.

    ``validation`` > 0 carves a validation part out of the *training* text (its last ``validation``
    share, again on a line boundary): ``train`` is then what precedes it and ``validation`` is it,
    so hyper-parameters can be picked without looking at ``test``."""
    if split not in ("train", "validation", "test", "all"):
        raise ValueError(f"split must be 'train', 'validation', 'test' or 'all', got {split!r}")
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must lie in [0, 1), got {validation}")
    if split == "validation" and not validation:
        raise ValueError("split 'validation' needs validation > 0 (the share of the training text held out)")
    path = shared_data_dir() / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")
    if split == "all":
        return text
    cut = _line_cut(text, 1.0 - held_out)
    if split == "test":
        return text[cut:]
    train = text[:cut]
    if not validation:
        return train
    vcut = _line_cut(train, 1.0 - validation)
    return train[:vcut] if split == "train" else train[vcut:]


def shakespeare(split: str = "train", chunk_chars: int = 350, validation: float = 0.0) -> list[dict[str, Any]]:
    """Tiny Shakespeare (train: first 90%, test: last 10%, split on a line boundary; ``validation``:
    see :func:`shakespeare_text`) as ``text`` samples of whole lines, each about ``chunk_chars``
    characters long."""
    text = shakespeare_text(split, validation=validation)
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


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("{}", "the digit {}", "the number {}", "a {}", "it is a {}")


def digit_texts(label: int) -> list[str]:
    """Every caption of a digit class: its word in each template ("the number seven" ...)."""
    return [t.format(DIGIT_WORDS[label]) for t in DIGIT_TEMPLATES]


def spoken_digits(split: str = "train", paired_fraction: float = 1.0, keep: str = "all",
                  image_test_fraction: float = 0.2, seed: int = 0) -> list[dict[str, Any]]:
    """Spoken, handwritten and written digits (the AV-MNIST idea with a text side): one sample per
    FSDD clip of the split (train: takes 5-49, test: takes 0-4), with a digit image of the same
    class drawn from scikit-learn's digits (train: 80%, test: the held-out 20%) and the digit's
    word in a template drawn from :data:`DIGIT_TEMPLATES`: triples paired at class level.

    ``paired_fraction`` < 1 (the low-pair regime): only that share of the samples, drawn at random,
    keeps all three modalities; every other sample keeps one of them, drawn uniformly (the others
    are None). ``keep``: ``all`` samples, only the ``paired`` ones or only the ``unpaired`` ones (two
    sources of a recipe can then be mixed with weights). Samples: ``image``, ``audio``, ``text``,
    ``label``.
    """
    if not 0.0 <= paired_fraction <= 1.0:
        raise ValueError(f"paired_fraction must lie in [0, 1], got {paired_fraction}")
    if keep not in ("all", "paired", "unpaired"):
        raise ValueError(f"keep must be 'all', 'paired' or 'unpaired', got {keep!r}")
    rng = np.random.default_rng(seed + (split == "test"))
    images = digits(split, test_fraction=image_test_fraction)
    by_class: dict[int, list[np.ndarray]] = {}
    for it in images:
        by_class.setdefault(it["label"], []).append(it["image"])
    out = []
    for clip in fsdd(split):
        y = clip["label"]
        pool = by_class[y]
        s = {"__key__": clip["__key__"].replace("fsdd-", "digits-"), "label": y, "audio": clip["audio"],
             "image": pool[rng.integers(len(pool))], "text": DIGIT_TEMPLATES[rng.integers(len(DIGIT_TEMPLATES))].format(DIGIT_WORDS[y])}
        paired = rng.random() < paired_fraction
        if not paired:
            kept = ("image", "audio", "text")[rng.integers(3)]
            for m in ("image", "audio", "text"):
                if m != kept:
                    s[m] = None
        if keep == "all" or (keep == "paired") == paired:
            out.append(s)
    return out


def tuxpaint(split: str = "train", test_fraction: float = 0.2, seed: int = 0,
             require_sound: bool = False) -> list[dict[str, Any]]:
    """Tux Paint's clip-art stamps: ``image`` (the PNG's path), ``text`` (its English caption, the
    first line of ``X.txt``), ``audio`` (the path of its sound effect ``X.ogg``, or None: 131 of the
    785 stamps have one) and ``label`` (the stamp's index, for instance-level retrieval). A fixed
    split: a seeded permutation of the stamps sorted by path, ``test_fraction`` held out."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root = shared_data_dir() / "tuxpaint"
    if not root.is_dir():
        raise FileNotFoundError(f"the Tux Paint stamps are not in {root} (see docs/data.md)")
    stamps = sorted(p for p in root.rglob("*.png") if p.with_suffix(".txt").is_file())
    order = np.random.default_rng(seed).permutation(len(stamps))
    n_test = int(round(test_fraction * len(stamps)))
    keep = {"train": order[n_test:], "test": order[:n_test], "all": order}[split]
    out = []
    for i in sorted(keep):
        png = stamps[i]
        caption = png.with_suffix(".txt").read_text(encoding="utf-8").strip().split("\n", 1)[0].strip()
        sound = png.with_suffix(".ogg")
        if require_sound and not sound.is_file():
            continue
        out.append({"__key__": f"tuxpaint-{png.relative_to(root).with_suffix('').as_posix().replace('/', '_')}",
                    "image": str(png), "text": caption, "audio": str(sound) if sound.is_file() else None,
                    "label": int(i)})
    return out


BUILTIN = {"digits": digits, "fsdd": fsdd, "shakespeare": shakespeare, "spoken_digits": spoken_digits,
           "tuxpaint": tuxpaint}


def load_builtin(name: str, split: str = "train", **kwargs: Any) -> list[dict[str, Any]]:
    """A built-in dataset by name (``digits`` ...) as a list of sample dicts; ``kwargs`` are the
    dataset's options (a recipe's source ``options``)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in dataset {name!r}; available: {sorted(BUILTIN)}")
    return BUILTIN[name](split=split, **kwargs)
