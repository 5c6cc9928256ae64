"""`mmjepa shards`: folder / CSV / JSONL / Hugging Face inputs -> tar shards + manifest."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmjepa.datasets import shared_data_dir
from mmjepa.shards import folder_samples, read_manifest, sanitize_key, write_shards
from mmjepa_cli import main as cli_main


def _png(value: int = 128, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _wav(sr: int = 8000, seconds: float = 0.2) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(sr * seconds)) / sr
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), sr, format="WAV")
    return buf.getvalue()


def _tar_members(path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


@pytest.fixture
def folder(tmp_path):
    """Three stems: a (png + txt + wav), b (jpg + txt), c/d (png in a sub-folder), plus junk."""
    root = tmp_path / "src"
    (root / "c").mkdir(parents=True)
    (root / "a.png").write_bytes(_png(10))
    (root / "a.txt").write_text("a cat\nun chat\n")
    (root / "a.wav").write_bytes(_wav())
    (root / "b.JPEG").write_bytes(_png(20))
    (root / "b.txt").write_text("a dog")
    (root / "c" / "d.png").write_bytes(_png(30))
    (root / "notes.md").write_text("ignored")
    return root


def test_folder_groups_files_by_stem(folder):
    samples = {s["__key__"]: s for s in folder_samples(folder)}
    assert set(samples) == {"a", "b", "c_d"}
    assert set(samples["a"]) == {"__key__", "png", "txt", "wav"}
    assert set(samples["b"]) == {"__key__", "jpg", "txt"}  # .JPEG -> jpg
    assert samples["a"]["txt"] == b"a cat\nun chat"
    first = {s["__key__"]: s for s in folder_samples(folder, text_lines="first")}
    assert first["a"]["txt"] == b"a cat"


@pytest.mark.parametrize("max_count,expected", [(1, [1, 1, 1]), (2, [2, 1]), (10, [3])])
def test_write_shards_splits_and_counts(folder, tmp_path, max_count, expected):
    stats = write_shards(folder_samples(folder), tmp_path / "out", max_count=max_count, progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert [s["count"] for s in manifest["shards"]] == expected
    assert manifest["total"] == stats.total == 3
    names = [n for s in manifest["shards"] for n in _tar_members(s["url"])]
    assert sorted(names) == sorted(["a.png", "a.txt", "a.wav", "b.jpg", "b.txt", "c_d.png"])


def test_max_size_rolls_over(folder, tmp_path):
    write_shards(folder_samples(folder), tmp_path / "out", max_count=100, max_size=1, progress=False)
    assert len(read_manifest(tmp_path / "out")["shards"]) == 3


def test_require_skips_and_counts(folder, tmp_path):
    stats = write_shards(folder_samples(folder), tmp_path / "out", require=("text",), progress=False)
    assert stats.total == 2 and stats.skipped == 1
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"] == 1


def test_roundtrip_through_webdataset(folder, tmp_path):
    import webdataset as wds

    write_shards(folder_samples(folder), tmp_path / "out", max_count=2, progress=False)
    urls = [s["url"] for s in read_manifest(tmp_path / "out")["shards"]]
    got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert got["a"]["wav"] == (folder / "a.wav").read_bytes()
    assert got["c_d"]["png"] == (folder / "c" / "d.png").read_bytes()


def test_duplicate_keys_are_renamed(tmp_path):
    samples = [{"__key__": "x", "txt": b"1"}, {"__key__": "x", "txt": b"2"}]
    write_shards(samples, tmp_path / "out", progress=False)
    names = _tar_members(read_manifest(tmp_path / "out")["shards"][0]["url"])
    assert sorted(names) == ["x.txt", "x_1.txt"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_inputs(folder, tmp_path, kind):
    rows = [{"key": "one", "image": "a.png", "audio": "a.wav", "text": "a cat", "label": 3, "split": "tr"},
            {"key": "two", "image": str(folder / "b.JPEG"), "text": "a dog", "label": 5, "split": "tr"}]
    path = folder / f"list.{kind}"
    if kind == "csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows))
    assert cli_main(["shards", kind, str(path), str(tmp_path / "out"), "--quiet"]) == 0
    manifest = read_manifest(tmp_path / "out")
    names = sorted(_tar_members(manifest["shards"][0]["url"]))
    assert names == ["one.cls", "one.json", "one.png", "one.txt", "one.wav", "two.cls", "two.jpg", "two.json", "two.txt"]


def test_hf_dataset_input(tmp_path):
    import datasets

    imgs = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 100, 200)]
    ds = datasets.Dataset.from_dict({"image": imgs, "text": ["x", "y", "z"], "label": [0, 1, 2]},
                                    features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    assert cli_main(["shards", "hf", str(tmp_path / "hf"), str(tmp_path / "out"), "--quiet"]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["total"] == 3 and manifest["fields"] == {"png": 3, "txt": 3, "cls": 3}


def test_empty_input_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no samples"):
        write_shards(folder_samples(tmp_path / "empty"), tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*.tar"))


def test_sanitize_key():
    assert sanitize_key("a/b.c d") == "a_b_c_d"


def test_real_tuxpaint_folder(tmp_path):
    data = shared_data_dir(required=False)
    if data is None or not (data / "tuxpaint").is_dir():
        pytest.skip("shared data not available")
    src = data / "tuxpaint" / "animals"
    stats = write_shards(folder_samples(src, text_lines="first"), tmp_path / "out", max_count=50,
                         require=("image", "text"), progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert stats.total > 20 and sum(s["count"] for s in manifest["shards"]) == stats.total
    assert all(s["count"] <= 50 for s in manifest["shards"])
