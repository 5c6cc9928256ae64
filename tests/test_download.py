"""Downloading FSDD into the cache: from a local file URL, a wrong checksum, no network."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from mmjepa import download
from mmjepa.datasets import shared_data_dir
from mmjepa.download import ensure_fsdd, folder_digest


@pytest.fixture
def archive(tmp_path) -> tuple[str, str]:
    """A zip laid out as the FSDD repository's archive (three tiny 'recordings'), its URL and digest."""
    rec = tmp_path / "src" / "recordings"
    rec.mkdir(parents=True)
    for name in ("0_a_0.wav", "1_a_0.wav", "2_b_3.wav"):
        (rec / name).write_bytes(name.encode() * 10)
    path = tmp_path / "fsdd.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("free-spoken-digit-dataset-master/README.md", "readme")
        for f in rec.iterdir():
            z.write(f, f"free-spoken-digit-dataset-master/recordings/{f.name}")
    return path.as_uri(), folder_digest(rec)


def test_download_into_the_cache_once(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("MMJEPA_CACHE", str(tmp_path / "cache"))
    url, digest = archive
    root = ensure_fsdd(url, digest, progress=False)
    assert sorted(p.name for p in (root / "fsdd" / "recordings").iterdir()) == ["0_a_0.wav", "1_a_0.wav", "2_b_3.wav"]
    assert not (tmp_path / "cache" / "downloads" / "fsdd.zip").exists()  # the archive is not kept
    assert ensure_fsdd("file:///nowhere/at/all.zip", digest, progress=False) == root  # no second download


def test_a_wrong_checksum_keeps_nothing(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("MMJEPA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="do not match their checksum"):
        ensure_fsdd(archive[0], "0" * 64, progress=False)
    assert not (tmp_path / "cache" / "fsdd").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["downloads"]
    assert not any((tmp_path / "cache" / "downloads").iterdir())


def test_no_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("MMJEPA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConnectionError, match="offline.*MMJEPA_DATA_DIR"):
        ensure_fsdd("http://127.0.0.1:9/fsdd.zip", "0" * 64, progress=False)
    with pytest.raises(ConnectionError, match="could not download"):
        download.fetch("file:///no/such/file.zip", tmp_path / "x.zip", progress=False)


def test_the_shipped_checksum_matches_the_shared_copy():
    root = shared_data_dir(required=False)
    if root is None or not (root / "fsdd" / "recordings").is_dir():
        pytest.skip("needs the shared data folder (FSDD)")
    assert folder_digest(root / "fsdd" / "recordings") == download.FSDD_SHA256
