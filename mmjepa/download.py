"""Downloading the small public data sets the demo and the recipes use, when they are not at hand.

Design decisions:
- nothing is downloaded when the data is already there: ``$MMJEPA_DATA_DIR``, or ``../shared/data``
  beside the checkout (see :func:`mmjepa.datasets.shared_data_dir`), come first;
- downloads go to the user's cache (``$MMJEPA_CACHE``, else ``$XDG_CACHE_HOME/mmjepa``, else
  ``~/.cache/mmjepa``), through a temporary file and folder renamed into place when complete, so
  that an interrupted download never leaves something that looks finished;
- what is checked is the content, not the archive: a SHA-256 over the sorted file names and the
  SHA-256 of each file, so that a re-packed archive with the same recordings passes and a changed
  recording does not;
- offline, the error says so and says how to point mmjepa at a copy instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
# SHA-256 of the 3,000 recordings (see folder_digest), from the repository's 2024-05-02 snapshot
FSDD_SHA256 = "a2e8a660492f28d9eed6270b290d26cbc5c81d6077ce87d3c0ad5adf4d4ee696"


def cache_dir() -> Path:
    """Where downloads are kept: ``$MMJEPA_CACHE``, ``$XDG_CACHE_HOME/mmjepa`` or ``~/.cache/mmjepa``."""
    if os.environ.get("MMJEPA_CACHE"):
        return Path(os.environ["MMJEPA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmjepa"


def folder_digest(folder: Path, pattern: str = "*.wav") -> str:
    """SHA-256 over the sorted names of the files matching ``pattern`` and each file's SHA-256."""
    h = hashlib.sha256()
    for path in sorted(folder.glob(pattern)):
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def fetch(url: str, dest: Path, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` (``https://`` or ``file://``) to ``dest`` through a temporary file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                      disable=not progress) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise ConnectionError(f"could not download {url} ({reason}); offline? Put a copy of the data in a "
                              "folder and set MMJEPA_DATA_DIR to it (docs/data.md)") from None
    tmp.replace(dest)
    return dest


def ensure_fsdd(url: str = FSDD_URL, sha256: str = FSDD_SHA256, progress: bool = True) -> Path:
    """The folder holding ``fsdd/recordings`` in the cache, downloaded and checked on first use."""
    root = cache_dir()
    recordings = root / "fsdd" / "recordings"
    if (root / "fsdd" / ".complete").is_file() and (root / "fsdd" / ".complete").read_text() == sha256:
        return root
    archive = fetch(url, root / "downloads" / "fsdd.zip", progress)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".fsdd-"))
    try:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                parts = Path(name).parts
                if len(parts) >= 2 and parts[-2] == "recordings" and name.endswith(".wav"):
                    (staging / "recordings").mkdir(exist_ok=True)
                    (staging / "recordings" / parts[-1]).write_bytes(z.read(name))
        got = folder_digest(staging / "recordings")
        if got != sha256:
            raise ValueError(f"the FSDD recordings downloaded from {url} do not match their checksum (got "
                             f"{got[:16]}..., expected {sha256[:16]}...): the repository changed, or the "
                             "download is damaged; nothing was kept")
        (staging / ".complete").write_text(sha256)
        shutil.rmtree(root / "fsdd", ignore_errors=True)
        staging.replace(root / "fsdd")
    except zipfile.BadZipFile:
        raise ValueError(f"{url} did not give a zip archive; nothing was kept") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return root
