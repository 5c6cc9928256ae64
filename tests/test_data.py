"""The streaming input pipeline (mmjepa.data): splitting, shuffling, decoding, processing, masks,
bad samples, mixing, exact resume, and the known multi-process traps (simulated ranks)."""

from __future__ import annotations

import io
import itertools
import warnings
from pathlib import Path
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmjepa import MMJepaConfig, MMJepaModel
from mmjepa.bench.data import measure_input
from mmjepa.engine import load_recipe
from mmjepa.modalities import get_modality, modality_for_extension
from mmjepa.data import (DataConfig, DataError, DataPipeline, DataStream, SampleProcessor, decode_meta,
                         iterate_epoch, model_inputs)
from mmjepa.datasets import digits, shakespeare, shakespeare_text, shared_data_dir, spoken_digits
from mmjepa.shards import write_shards

IMAGE = {"image_size": 32, "patch_size": 4, "num_channels": 1, "image_mean": [0.5], "image_std": [0.5], "min_keep": 2}


def model_config(**modalities) -> MMJepaConfig:
    return MMJepaConfig(modalities=modalities or {"image": dict(IMAGE)}, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
                        predictor_num_attention_heads=2)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_digit_shards(path, counts: list[int], prefix: str = "d", bad: set[int] = frozenset()):
    """Shards of real digit images (png + cls) with the given per-shard counts; ``bad`` indices get
    a corrupt png. Returns the folder (holding manifest.json)."""
    items = digits("all")
    samples = []
    for i in range(sum(counts)):
        it = items[i]
        png = b"not a png" if i in bad else _png(it["image"])
        samples.append({"__key__": f"{prefix}{i:04d}", "png": png, "cls": str(it["label"]).encode()})
    stats = None
    out = path / prefix
    # one shard per requested count
    start = 0
    for n in counts:
        stats = write_shards(samples[start:start + n], out / f"part{start:05d}", prefix=prefix, max_count=n,
                             progress=False)
        start += n
    # merge the manifests into one folder-level manifest
    import json

    shards, total = [], 0
    for part in sorted(out.glob("part*")):
        m = json.loads((part / "manifest.json").read_text())
        shards += [{**s, "url": f"{part.name}/{s['url']}"} for s in m["shards"]]
        total += m["total"]
    (out / "manifest.json").write_text(json.dumps({"total": total, "shards": shards}))
    assert stats is not None
    return out


def pipeline(sources, rank=0, world=1, **data) -> DataPipeline:
    cfg = DataConfig(sources=sources, **{"batch_size": 4, "num_workers": 0, "shuffle_buffer": 16, **data})
    return DataPipeline(cfg, model_config(), rank, world)


def epoch_keys(p: DataPipeline, epoch: int = 0) -> list[str]:
    return [k for b in iterate_epoch(p, epoch) for k in b["__key__"]]


# ----------------------------------------------------------------------------- decode + process
def test_plugins_decode_bytes_by_extension():
    image, audio, text = (get_modality(m) for m in ("image", "audio", "text"))
    arr = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    img = image.decode(_png(arr), "png", image.make_config({"image_size": 8, "patch_size": 4}))
    assert np.array_equal(np.asarray(img), arr)
    big = image.decode(_png(np.zeros((200, 120), np.uint8)), "png", image.make_config({"image_size": 16, "patch_size": 4}))
    assert big.size == (40, 67)  # box-reduced by 3 (the largest factor keeping >= 2x the input size)
    buf = io.BytesIO()
    sf.write(buf, np.stack([np.full(800, 0.25), np.full(800, 0.75)], 1).astype("float32"), 8000, format="FLAC")
    wav = audio.decode(buf.getvalue(), "flac", audio.make_config())
    assert wav["sampling_rate"] == 8000 and np.allclose(wav["array"], 0.5, atol=1e-3)  # channels averaged
    assert text.decode("héllo \n".encode(), "txt", text.make_config()) == "héllo"
    with pytest.raises(ValueError, match="UTF-8"):
        text.decode(b"\xff\xfe bad", "txt", text.make_config())
    assert decode_meta("json", b'{"a": 1}') == {"a": 1}
    assert decode_meta("cls", b"7") == 7
    assert decode_meta("cls", 3) == 3  # already decoded values pass through
    assert modality_for_extension("x.PNG") == "image" and modality_for_extension("flac") == "audio"
    assert modality_for_extension("cls") is None


def test_sample_processor_renames_and_processes():
    proc = SampleProcessor(model_config())
    arr = np.full((8, 8), 255, np.uint8)
    out = proc({"__key__": "k", "png": _png(arr), "cls": b"4", "json": b"{}"})
    assert set(out) == {"__key__", "pixel_values", "label"}
    assert out["pixel_values"].shape == (1, 32, 32) and out["label"] == 4
    assert torch.allclose(out["pixel_values"], torch.ones(1, 32, 32))  # white -> (1 - 0.5) / 0.5
    with pytest.raises(ValueError, match="no image"):
        proc({"__key__": "k", "txt": b"no image here"})


# ----------------------------------------------------------------------------- epochs and splits
@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_epoch_sees_every_sample_once(tmp_path, num_workers):
    src = make_digit_shards(tmp_path, [8, 8, 8, 8])
    p = pipeline([{"type": "shards", "urls": str(src)}], num_workers=num_workers)
    assert p.batches_per_epoch == 8
    keys = epoch_keys(p)
    assert sorted(keys) == [f"d{i:04d}" for i in range(32)]
    b = next(iterate_epoch(p))
    assert b["pixel_values"].shape == (4, 1, 32, 32) and b["label"].shape == (4,)
    ms = b["masks"]["image"]
    assert ms["context"].shape[0] == 4 and ms["target"].shape[:2] == (4, 4)


def test_epochs_reshuffle(tmp_path):
    src = make_digit_shards(tmp_path, [8, 8, 8, 8])
    p = pipeline([{"type": "shards", "urls": str(src)}])
    e0, e0_again, e1 = epoch_keys(p, 0), epoch_keys(p, 0), epoch_keys(p, 1)
    assert e0 == e0_again and e0 != e1 and sorted(e0) == sorted(e1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_split_shards_exactly_once(tmp_path, num_workers):
    """Two simulated ranks: disjoint, complete, equal batch counts."""
    src = make_digit_shards(tmp_path, [8, 8, 8, 8])
    ranks = [epoch_keys(pipeline([{"type": "shards", "urls": str(src)}], r, 2, num_workers=num_workers))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 16
    assert sorted(ranks[0] + ranks[1]) == [f"d{i:04d}" for i in range(32)]


def test_uneven_shards_give_equal_batch_counts(tmp_path):
    """5 shards over 2 ranks (3 vs 2): both still deliver n = 40 // (2*4) = 5 batches (the short
    rank wraps into its next pass) instead of one rank stopping early and hanging DDP."""
    src = make_digit_shards(tmp_path, [8, 8, 8, 8, 8])
    ps = [pipeline([{"type": "shards", "urls": str(src)}], r, 2) for r in range(2)]
    assert {p.batches_per_epoch for p in ps} == {5}
    counts = [len(list(iterate_epoch(p))) for p in ps]
    assert counts == [5, 5]
    keys = Counter(k for p in ps for k in epoch_keys(p))
    assert sum(keys.values()) == 40 and len(keys) >= 32  # at most one shard's worth repeated


def test_resampled_shards_never_run_dry(tmp_path):
    src = make_digit_shards(tmp_path, [8, 8])
    p = pipeline([{"type": "shards", "urls": str(src), "resampled": True}], 1, 3, num_workers=2)
    keys = epoch_keys(p)
    assert len(keys) == p.batches_per_epoch * 4 and set(keys) <= {f"d{i:04d}" for i in range(16)}


def test_too_few_shards_for_the_processes(tmp_path):
    src = make_digit_shards(tmp_path, [8])
    with pytest.raises(ValueError, match="cannot be split over 2 processes"):
        next(iterate_epoch(pipeline([{"type": "shards", "urls": str(src)}], 0, 2)))


def test_builtin_global_batches_match_one_big_process():
    """Rank batches of size b over 2 ranks == the batch of size 2b in one process (same samples)."""
    one = iterate_epoch(pipeline([{"type": "builtin", "name": "digits"}], batch_size=8))
    two = [iterate_epoch(pipeline([{"type": "builtin", "name": "digits"}], r, 2, batch_size=4)) for r in range(2)]
    for big, small0, small1 in itertools.islice(zip(one, *two), 5):
        assert big["__key__"] == small0["__key__"] + small1["__key__"]
        assert torch.equal(big["pixel_values"], torch.cat([small0["pixel_values"], small1["pixel_values"]]))


# ----------------------------------------------------------------------------- bad samples, mixing
def test_bad_samples_are_skipped_and_counted(tmp_path):
    src = make_digit_shards(tmp_path, [8, 8], bad={3, 11})
    p = pipeline([{"type": "shards", "urls": str(src)}], shuffle=False)
    stream = DataStream(p)
    with pytest.warns(UserWarning, match="skipping bad sample 'd0003'"):
        keys = [k for _ in range(3) for k in next(stream)["__key__"]]
    assert keys == [f"d{i:04d}" for i in range(14) if i not in (3, 11)]
    assert stream.skipped == 2
    with pytest.raises(Exception):
        list(iterate_epoch(pipeline([{"type": "shards", "urls": str(src)}], on_error="raise")))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_of_only_bad_samples_stops_with_the_first_cause(tmp_path, num_workers):
    """Every sample fails: the stream raises DataError at once (it used to spin for ever), naming
    the first cause and the count, also from data-loader workers."""
    src = make_digit_shards(tmp_path, [8, 8], bad=set(range(16)))
    p = pipeline([{"type": "shards", "urls": str(src)}], shuffle=False, num_workers=num_workers, error_window=32)
    with warnings.catch_warnings(), pytest.raises(DataError) as err:  # (workers warn in their own processes)
        warnings.simplefilter("ignore")
        next(DataStream(p))
    msg = str(err.value)
    assert "32 of the last 32 samples" in msg and "could not decode image bytes" in msg and "sample 'd00" in msg
    assert "Traceback" not in msg


@pytest.mark.parametrize("rate,stops", [(0.3, True), (0.7, False)])
def test_the_share_of_bad_samples_has_a_limit(tmp_path, rate, stops):
    src = make_digit_shards(tmp_path, [16, 16], bad=set(range(0, 32, 2)))  # every other sample is bad
    p = pipeline([{"type": "shards", "urls": str(src)}], shuffle=False, error_window=16, max_error_rate=rate,
                 batch_size=2)
    stream = DataStream(p)
    with pytest.warns(UserWarning):
        if stops:
            with pytest.raises(DataError, match=r"8 of the last 16 samples .*max_error_rate=0\.3"):
                for _ in range(16):
                    next(stream)
        else:
            keys = [k for _ in range(8) for k in next(stream)["__key__"]]
            assert keys == [f"d{i:04d}" for i in range(1, 32, 2)]


def test_missing_shards_are_reported_before_reading(tmp_path):
    with pytest.raises(ValueError, match="no such folder or file: .*nowhere"):
        pipeline([{"type": "shards", "urls": str(tmp_path / "nowhere")}])
    with pytest.raises(ValueError, match=r"no such shard file: .*x-000002\.tar \(and 1 more\)"):
        src = make_digit_shards(tmp_path, [8, 8])
        tars = sorted(str(p) for p in src.rglob("*.tar"))
        pipeline([{"type": "shards", "urls": tars + [str(tmp_path / "x-000002.tar"), str(tmp_path / "x-3.tar")]}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no manifest.json"):
        pipeline([{"type": "shards", "urls": str(tmp_path / "empty")}])


def test_fields_of_modalities_the_model_lacks_are_reported(tmp_path):
    items = digits("all")
    samples = [{"__key__": f"k{i}", "png": _png(items[i]["image"]), "txt": b"a caption"} for i in range(8)]
    write_shards(samples, tmp_path / "pt", progress=False)
    p = pipeline([{"type": "shards", "urls": str(tmp_path / "pt")}])
    assert p.preflight() == {"txt": "text"}


def test_mixing_weights(tmp_path):
    a = make_digit_shards(tmp_path, [16, 16], prefix="a")
    b = make_digit_shards(tmp_path, [16, 16], prefix="b")
    p = pipeline([{"type": "shards", "urls": str(a), "weight": 3.0},
                  {"type": "shards", "urls": str(b), "weight": 1.0}], epoch_samples=400, shuffle_buffer=4)
    keys = epoch_keys(p)
    frac_a = sum(k.startswith("a") for k in keys) / len(keys)
    assert abs(frac_a - 0.75) < 0.07


# ----------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("source,num_workers,stop", [("shards", 0, 3), ("shards", 2, 3), ("builtin", 2, 5),
                                                      ("shards", 2, 9)])
def test_resume_continues_with_the_same_batches(tmp_path, source, num_workers, stop):
    """A fresh stream loaded with the state after ``stop`` batches yields exactly the batches (keys,
    pixels, masks) the original stream yields next, across an epoch boundary too."""
    src = ({"type": "shards", "urls": str(make_digit_shards(tmp_path, [8, 8, 8, 8], bad={5}))}
           if source == "shards" else {"type": "builtin", "name": "digits"})
    p = pipeline([src], num_workers=num_workers, epoch_samples=28 if source == "shards" else None)
    ref = DataStream(p)
    for _ in range(stop):
        next(ref)
    state = ref.state_dict()
    resumed = DataStream(pipeline([src], num_workers=num_workers, epoch_samples=28 if source == "shards" else None))
    resumed.load_state_dict(state)
    for _ in range(4):
        a, b = next(ref), next(resumed)
        assert a["__key__"] == b["__key__"]
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        for k in ("context", "target"):
            assert torch.equal(a["masks"]["image"][k], b["masks"]["image"][k])
    ref.close()
    resumed.close()


def test_resume_with_other_worker_count_is_refused():
    p = pipeline([{"type": "builtin", "name": "digits"}], num_workers=2)
    s = DataStream(p)
    next(s)
    other = DataStream(pipeline([{"type": "builtin", "name": "digits"}], num_workers=3))
    with pytest.raises(ValueError, match="num_workers"):
        other.load_state_dict(s.state_dict())
    s.close()


def test_masks_are_seeded_per_batch():
    p = pipeline([{"type": "builtin", "name": "digits"}])
    a, b = next(iterate_epoch(p, 0)), next(iterate_epoch(p, 0))
    c = next(iterate_epoch(p, 1))
    assert torch.equal(a["masks"]["image"]["context"], b["masks"]["image"]["context"])
    assert not torch.equal(a["masks"]["image"]["target"], c["masks"]["image"]["target"])


def test_model_inputs_drop_metadata():
    b = next(iterate_epoch(pipeline([{"type": "builtin", "name": "digits"}])))
    assert "__key__" in b and set(model_inputs(b)) == {"pixel_values", "masks", "present", "label"}


# ----------------------------------------------------------------------------- other sources
def test_hf_streaming_source(tmp_path):
    """datasets' webdataset loader (streaming, media kept binary) + split_dataset_by_node."""
    src = make_digit_shards(tmp_path, [8, 8, 8, 8])
    urls = sorted(str(u) for u in src.glob("part*/*.tar"))
    hf = {"type": "hf", "path": "webdataset", "urls": urls, "num_samples": 32}
    one = epoch_keys(pipeline([hf]))
    assert sorted(one) == [f"d{i:04d}" for i in range(32)]
    ranks = [epoch_keys(pipeline([hf], r, 2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(one) and not set(ranks[0]) & set(ranks[1])


def test_audio_modality_plugs_in(tmp_path):
    """The pipeline goes through the Modality interface: real spoken digits + images, the audio
    plug-in's processor, its collate (padding validity) and its mask sampler."""
    pytest.importorskip("mmjepa.modalities.audio")
    data = shared_data_dir(required=False)
    if data is None or not (data / "fsdd" / "recordings").is_dir():
        pytest.skip("shared data not available")
    wavs = sorted((data / "fsdd" / "recordings").glob("*.wav"))[:8]
    items = digits("all")
    samples = [{"__key__": f"s{i}", "png": _png(items[i]["image"]), "wav": w.read_bytes()} for i, w in enumerate(wavs)]
    write_shards(samples, tmp_path / "av", max_count=4, progress=False)
    cfg = model_config(image=dict(IMAGE), audio={})
    p = DataPipeline(DataConfig(sources=[{"type": "shards", "urls": str(tmp_path / "av")}], batch_size=4,
                                num_workers=0), cfg)
    b = next(iterate_epoch(p))
    assert b["input_features"].shape[0] == 4 and b["pixel_values"].shape[0] == 4
    assert set(b["masks"]) == {"image", "audio"}
    out = MMJepaModel(cfg)(**model_inputs(b))
    assert torch.isfinite(out.loss)


def test_input_throughput_is_measured():
    recipe = load_recipe({"model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1,
                                    "predictor_num_attention_heads": 2, "modalities": {"image": dict(IMAGE)}},
                          "data": {"sources": [{"type": "builtin", "name": "digits"}], "batch_size": 4, "num_workers": 0},
                          "train": {"max_steps": 1}})
    res = measure_input(recipe, batches=3, repeats=1, warmup=1)
    assert res["samples_per_s"] > 0 and res["batch_size"] == 4


@pytest.mark.parametrize("bad,match", [({"sources": []}, "at least one source"),
                                       ({"batch_size": 0}, "batch_size"),
                                       ({"on_error": "ignore"}, "on_error"),
                                       ({"sources": [{"type": "tfrecord"}]}, "type must be one of")])
def test_data_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**{"sources": [{"type": "builtin", "name": "digits"}], **bad})


def test_samples_may_hold_any_subset_of_the_modalities(tmp_path):
    """``data.require: []``: image-text, image-only and text-only samples in one stream; the
    default (every modality required) skips the incomplete ones; a sample with none is bad."""
    items = digits("all")
    tok = Path(__file__).resolve().parent.parent / "recipes" / "multimodal" / "digits_tokenizer"
    samples = []
    for i in range(12):
        s = {"__key__": f"k{i:02d}"}
        if i % 3 != 2:
            s["png"] = _png(items[i]["image"])
        if i % 3 != 1:
            s["txt"] = f"the number {i}".encode()
        samples.append(s)
    samples.insert(0, {"__key__": "k99", "json": b"{}"})  # holds nothing the model uses
    write_shards(samples, tmp_path / "mix", progress=False)
    cfg = model_config(image=dict(IMAGE), text={"vocab_size": 80, "max_length": 8, "tokenizer": str(tok)})
    src = [{"type": "shards", "urls": str(tmp_path / "mix")}]

    def pipe(**data) -> DataPipeline:
        return DataPipeline(DataConfig(sources=src, **{"num_workers": 0, "shuffle": False, **data}), cfg)

    p = pipe(require=[], batch_size=6)
    stream = DataStream(p)
    with pytest.warns(UserWarning, match="holds none of the model's modalities"):
        b, b2 = next(stream), next(stream)
    assert b["present"]["image"].tolist() == [0, 1, 3, 4] and b["present"]["text"].tolist() == [0, 2, 3, 5]
    assert b["pixel_values"].shape[0] == 4 and b["input_ids"].shape[0] == 4
    assert b2["__key__"][-1] == "k11" and stream.skipped == 1
    out = MMJepaModel(cfg)(**model_inputs(b))
    assert {"intra/image", "intra/text"} <= set(out.losses)
    strict = pipe(batch_size=4)  # the default: every modality required
    with pytest.warns(UserWarning):
        keys = next(DataStream(strict))["__key__"]
    assert keys == ["k00", "k03", "k06", "k09"]
    with pytest.raises(ValueError, match="data.require names"):
        pipe(require=["audio"]).preflight()


def test_augmentation_in_the_pipeline_is_a_function_of_the_batch(tmp_path):
    """The training pipeline augments (seeded per batch, like the masks): the same epoch twice gives
    the same pixels; the image processor of evaluation does not augment."""
    aug = dict(IMAGE, crop_scale=[0.5, 1.0], hflip=True)
    cfg = model_config(image=aug)
    src = [{"type": "builtin", "name": "digits"}]

    def first_batches(n: int = 2) -> list[torch.Tensor]:
        p = DataPipeline(DataConfig(sources=src, batch_size=4, num_workers=0, shuffle=False), cfg)
        stream = DataStream(p)
        return [next(stream)["pixel_values"] for _ in range(n)]

    a, b = first_batches(), first_batches()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    plain = DataPipeline(DataConfig(sources=src, batch_size=4, num_workers=0, shuffle=False), model_config())
    assert not torch.equal(a[0], next(DataStream(plain))["pixel_values"])


def test_the_spoken_digits_low_pair_subsets():
    if shared_data_dir(required=False) is None:
        pytest.skip("needs the FSDD recordings ($MMJEPA_DATA_DIR)")
    every = spoken_digits("train", paired_fraction=0.05)
    paired = spoken_digits("train", paired_fraction=0.05, keep="paired")
    unpaired = spoken_digits("train", paired_fraction=0.05, keep="unpaired")
    assert len(every) == len(paired) + len(unpaired) == 2700 and 100 < len(paired) < 170
    assert all(all(s[m] is not None for m in ("image", "audio", "text")) for s in paired)
    assert all(sum(s[m] is not None for m in ("image", "audio", "text")) == 1 for s in unpaired)
    assert [s["__key__"] for s in paired] == [s["__key__"] for s in every if s["image"] is not None and s["text"] is not None]


def test_shakespeare_validation_is_carved_out_of_training_text_never_test(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    lines = [f"line {i:03d} of the play\n" for i in range(200)]
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("".join(lines), encoding="utf-8")
    monkeypatch.setenv("MMJEPA_DATA_DIR", str(tmp_path))
    train, test = shakespeare_text("train"), shakespeare_text("test")
    fit, val = shakespeare_text("train", validation=0.1), shakespeare_text("validation", validation=0.1)
    assert train + test == "".join(lines) and fit + val == train  # whole lines, nothing lost or shared
    assert val.startswith("line 163") and test.startswith("line 181")  # the line after each cut point
    assert "".join(s["text"] for s in shakespeare("train", chunk_chars=50, validation=0.1)) == fit
    with pytest.raises(ValueError, match="needs validation > 0"):
        shakespeare_text("validation")
    with pytest.raises(ValueError, match=r"validation must lie in \[0, 1\)"):
        shakespeare_text("train", validation=1.0)
