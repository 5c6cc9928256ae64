"""Galleries: embed items from a folder / shards / manifest / strings, save, load, search from any
modality; refuse another model's queries; faiss agrees with exact search; retrieval and zero-shot
evaluation; the embed / search / eval commands."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import mmjepa_cli
from mmjepa import MMJepaConfig, MMJepaModel, MMJepaProcessor
from mmjepa.datasets import DIGIT_WORDS
from mmjepa.eval.crossmodal import class_text_embeddings, evaluate_retrieval, zeroshot_classify
from mmjepa.retrieval import EmbeddingIndex, embed_items, model_identity, read_items, string_items, string_modality
from mmjepa.retrieval.items import detect_kind
from mmjepa.shards import write_shards

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "recipes" / "multimodal" / "digits_tokenizer"
N = 12


def make_config() -> MMJepaConfig:
    mods = {"image": {"image_size": 16, "patch_size": 4, "num_channels": 1, "image_mean": [0.5], "image_std": [0.5]},
            "audio": {"num_mel_bins": 32, "max_frames": 64, "patch_size": 16, "max_freq_hz": 4000},
            "text": {"vocab_size": 80, "max_length": 8, "tokenizer": str(TOKENIZER)}}
    return MMJepaConfig(modalities=mods, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                        objectives={"intra": {}, "pooled": {}})


def caption(i: int) -> str:
    return f"{DIGIT_WORDS[i % 10]} {DIGIT_WORDS[i // 10]} {DIGIT_WORDS[(3 * i + 1) % 10]}"  # distinct per item


def item_files(i: int) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    png = io.BytesIO()
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8), mode="L").save(png, format="PNG")
    t = np.arange(4000) / 8000
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.01 * rng.standard_normal(4000)).astype(np.float32),
             8000, format="WAV")
    return {"png": png.getvalue(), "wav": wav.getvalue(), "txt": caption(i).encode()}


@pytest.fixture(scope="module")
def model() -> MMJepaModel:
    torch.manual_seed(0)
    return MMJepaModel(make_config()).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """N items in two sub-folders; item 3 has no sound, item 5 no caption."""
    root = tmp_path_factory.mktemp("items")
    for i in range(N):
        for ext, data in item_files(i).items():
            if (i, ext) in ((3, "wav"), (5, "txt")):
                continue
            path = root / f"part{i % 2}" / f"item{i:02d}.{ext}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    return root


def key(i: int) -> str:
    return f"part{i % 2}/item{i:02d}"


def test_items_are_read_from_a_folder_by_stem(folder):
    items = list(read_items(str(folder)))
    assert [it["__key__"] for it in items] == sorted(key(i) for i in range(N))
    assert detect_kind(str(folder)) == "folder" and detect_kind("builtin:spoken_digits") == "builtin"
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        detect_kind(str(folder / "nothing"))


def test_embed_save_load_search_round_trip_for_each_modality(model, folder, tmp_path):
    index = EmbeddingIndex.build(model, read_items(str(folder)), progress=False, model_ref="tiny")
    assert {m: len(k) for m, k in index.keys.items()} == {"image": N, "audio": N - 1, "text": N - 1}
    assert key(3) not in index.keys["audio"] and key(5) not in index.keys["text"]
    index.save(tmp_path / "g")
    loaded = EmbeddingIndex.load(tmp_path / "g", model)
    assert loaded.keys == index.keys and loaded.identity == index.identity == model_identity(model)
    assert all(torch.equal(loaded.embeddings[m], index.embeddings[m]) for m in index.embeddings)
    i = 4
    queries = {"image": {"images": str(folder / f"{key(i)}.png")}, "audio": {"audio": str(folder / f"{key(i)}.wav")},
               "text": {"text": caption(i)}}
    for m, q in queries.items():  # an item queried by itself is its own best match
        top = loaded.search(target=m, k=3, **q)[0]
        assert top[0][0] == key(i) and top[0][1] == pytest.approx(1.0, abs=1e-4), (m, top)
        assert top[0][1] >= top[1][1] >= top[2][1]
    cross = loaded.search(target="image", k=N + 5, text=[caption(0), caption(1)])
    assert len(cross) == 2 and len(cross[0]) == N  # k is capped at the gallery's size
    pred = loaded.search(target="audio", k=2, mode="predicted", text=caption(0))
    assert len(pred[0]) == 2 and all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for _, s in pred[0])


def test_the_embeddings_are_the_models_and_strings_are_items(model, folder):
    assert string_modality(model) == "text"
    done = embed_items(model, string_items([caption(0), caption(7)], "text"), ["text"], progress=False)
    direct = model.embed(**MMJepaProcessor.from_config(model.config)(text=[caption(0), caption(7)]))["text"]
    assert done.keys["text"] == [caption(0), caption(7)]
    torch.testing.assert_close(done.embeddings["text"], direct)
    small = embed_items(model, read_items(str(folder)), ["image"], batch_size=5, progress=False)
    large = embed_items(model, read_items(str(folder)), ["image"], batch_size=64, progress=False)
    torch.testing.assert_close(small.embeddings["image"], large.embeddings["image"])  # batching changes nothing


def test_a_gallery_refuses_another_models_queries(model, folder, tmp_path):
    index = EmbeddingIndex.build(model, read_items(str(folder)), ["image"], progress=False)
    index.save(tmp_path / "g")
    torch.manual_seed(1)
    other = MMJepaModel(make_config())
    with pytest.raises(ValueError, match="embedded by another model"):
        EmbeddingIndex.load(tmp_path / "g", other)
    with pytest.raises(ValueError, match="another model"):
        index.search_embeddings(torch.randn(1, 32), identity=model_identity(other))
    with pytest.raises(ValueError, match="no 'text' items"):
        index.search(target="text", text="one")


def test_a_tampered_gallery_is_refused_on_load(model, folder, tmp_path):
    import shutil
    index = EmbeddingIndex.build(model, read_items(str(folder)), ["image", "text"], progress=False)
    index.save(tmp_path / "g")
    assert set(json.loads((tmp_path / "g" / "gallery.json").read_text())["checksums"]) == {"keys.json",
                                                                                         "embeddings.safetensors"}

    def tampered(name, edit, drop_checksums=False):
        g = tmp_path / name
        shutil.copytree(tmp_path / "g", g)
        stored = json.loads((g / "keys.json").read_text())
        edit(stored)
        (g / "keys.json").write_text(json.dumps(stored))
        if drop_checksums:  # as a gallery saved before checksums: the counts still have to agree
            meta = json.loads((g / "gallery.json").read_text())
            del meta["checksums"]
            (g / "gallery.json").write_text(json.dumps(meta))
        return g

    cases = {"added": lambda s: s["keys"]["image"].append("extra"),
             "removed": lambda s: s["keys"]["text"].pop(),
             "reordered": lambda s: s["keys"]["image"].reverse(),
             "renamed": lambda s: s["keys"]["image"].__setitem__(0, "someone-else")}
    for name, edit in cases.items():
        with pytest.raises(ValueError, match="does not match the checksum"):
            EmbeddingIndex.load(tampered(name, edit), model)
    with pytest.raises(ValueError, match="image has 13 keys in keys.json, 12 embeddings"):
        EmbeddingIndex.load(tampered("old-added", cases["added"], drop_checksums=True), model)
    with pytest.raises(ValueError, match=r"keys.json must hold"):
        EmbeddingIndex.load(tampered("garbled", lambda s: s.update(keys=["a"]), drop_checksums=True))
    (tmp_path / "g" / "embeddings.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="embeddings.safetensors does not match the checksum"):
        EmbeddingIndex.load(tmp_path / "g", model)


def test_bad_items_are_skipped_and_counted(model, folder, tmp_path):
    items = list(read_items(str(folder)))
    items[0] = {**items[0], "png": b"not an image"}
    items.append({"__key__": "nothing", "json": b"{}"})
    with pytest.warns(UserWarning, match="dropping the image|skipping item"):
        done = embed_items(model, items, progress=False)
    assert done.items == N + 1 and done.skipped == 1 and done.dropped == {"image": 1}
    assert len(done.keys["image"]) == N - 1


def test_faiss_and_exact_search_agree():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(2000, 32, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(50, 32, generator=g), dim=-1)
    keys = {"image": [f"k{i}" for i in range(len(x))]}
    exact = EmbeddingIndex({"image": x}, keys, "id").search_embeddings(q, k=10)
    truth = (q @ x.T).topk(10).indices
    assert [[k for k, _ in r] for r in exact] == [[f"k{int(i)}" for i in row] for row in truth]
    for backend, opts in (("flat", {}), ("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"ef_search": 256})):
        got = EmbeddingIndex({"image": x}, keys, "id", backend=backend, backend_options=opts).search_embeddings(q, k=10)
        overlap = np.mean([len({k for k, _ in a} & {k for k, _ in b}) / 10 for a, b in zip(got, exact)])
        assert overlap >= (1.0 if backend != "hnsw" else 0.95), (backend, overlap)
        assert got[0][0][1] == pytest.approx(exact[0][0][1], abs=1e-5)


def test_a_faiss_gallery_round_trips(model, folder, tmp_path):
    pytest.importorskip("faiss")
    index = EmbeddingIndex.build(model, read_items(str(folder)), ["image", "text"], backend="hnsw", progress=False)
    index.save(tmp_path / "g")
    assert (tmp_path / "g" / "faiss-image.index").is_file()
    loaded = EmbeddingIndex.load(tmp_path / "g", model, ef_search=128)
    assert loaded.backend == "hnsw" and loaded.backend_options["ef_search"] == 128
    assert loaded._search["image"].index.hnsw.efSearch == 128
    loaded.configure(ef_search=16)
    assert loaded._search["image"].index.hnsw.efSearch == 16 and loaded.backend_options["ef_search"] == 16
    assert loaded.search(target="image", text=caption(2), k=4) == index.search(target="image", text=caption(2), k=4)


def test_items_from_shards_and_manifests(model, folder, tmp_path):
    write_shards(read_items(str(folder)), tmp_path / "shards", max_count=5, progress=False)
    from_shards = embed_items(model, read_items(str(tmp_path / "shards")), ["image"], progress=False)
    from_folder = embed_items(model, read_items(str(folder)), ["image"], progress=False)
    assert len(from_shards.keys["image"]) == N
    torch.testing.assert_close(from_shards.embeddings["image"], from_folder.embeddings["image"])
    rows = [{"key": f"m{i}", "image": f"{key(i)}.png", "caption": caption(i), "label": i % 3} for i in range(N)]
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    try:
        done = embed_items(model, read_items(str(folder / "manifest.jsonl"), text_columns=["caption"]), progress=False)
    finally:
        (folder / "manifest.jsonl").unlink()
    assert done.keys["image"] == done.keys["text"] == [f"m{i}" for i in range(N)]
    assert done.labels["image"] == [i % 3 for i in range(N)]


def test_retrieval_evaluation_both_ways(model, folder):
    res = evaluate_retrieval(model, read_items(str(folder)), ks=(1, N), progress=False)
    assert res["positives"] == "item" and res["counts"] == {"image": N, "audio": N - 1, "text": N - 1}
    r = res["image_to_audio"]
    assert r["queries"] == N - 1 and r["no_positive"] == 1 and r["gallery"] == N - 1
    assert r[f"r{N}"] == 1.0 and 1 <= r["median_rank"] <= r["mean_rank"] * 2
    assert {"image_to_text_predicted", "text_to_audio_predicted"} <= set(res)
    # the same numbers by hand, for one direction
    done = embed_items(model, read_items(str(folder)), progress=False)
    sim = done.embeddings["text"] @ done.embeddings["image"].T
    ranks = [1 + int((sim[q] > sim[q, done.keys["image"].index(k)]).sum()) for q, k in enumerate(done.keys["text"])]
    assert res["text_to_image"]["r1"] == pytest.approx(np.mean(np.array(ranks) == 1))
    assert res["text_to_image"]["mean_rank"] == pytest.approx(np.mean(ranks))


def test_zeroshot_matches_a_hand_computation(model, folder):
    items = [dict(it, cls=str(i % 3).encode()) for i, it in enumerate(read_items(str(folder)))]
    names, templates = ["one", "two", "three"], ["the number {}", "{}"]
    res = zeroshot_classify(model, items, "image", names, templates, progress=False)
    classes = class_text_embeddings(model, names, templates)
    emb = embed_items(model, items, ["image"], progress=False).embeddings["image"]
    expected = float(((emb @ classes.T).argmax(1) == torch.arange(N) % 3).float().mean())
    assert res["accuracy"] == pytest.approx(expected) and res["items"] == N and "accuracy_predicted" in res
    with pytest.raises(ValueError, match="needs a label"):
        zeroshot_classify(model, read_items(str(folder)), "image", names, progress=False)
    with pytest.raises(ValueError, match="where the class name goes"):
        class_text_embeddings(model, names, ["no slot"])


def test_embed_search_and_eval_from_the_command_line(model, folder, tmp_path, capsys):
    model.save_pretrained(tmp_path / "model")
    assert mmjepa_cli.main(["embed", str(folder), "--model", str(tmp_path / "model"), "--output",
                            str(tmp_path / "g"), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert all(f"{n} {m}" in said for n, m in ((12, "image"), (11, "audio"), (11, "text"))) and "skipped 0" in said
    assert mmjepa_cli.main(["search", "--index", str(tmp_path / "g"), "--text", caption(6), "--target", "text",
                            "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["query"] == caption(6) and out[0]["results"][0]["key"] == key(6)
    assert mmjepa_cli.main(["search", "--index", str(tmp_path / "g"), "--image", str(folder / f"{key(1)}.png"),
                            "--target", "image", "-k", "1"]) == 0
    assert key(1) in capsys.readouterr().out
    assert mmjepa_cli.main(["eval", "retrieval", str(folder), "--model", str(tmp_path / "model"), "--quiet",
                            "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["image_to_text"]["queries"] == N - 1
    assert mmjepa_cli.main(["search", "--index", str(tmp_path / "g"), "--target", "text"]) == 2  # no query
    assert "give a query" in capsys.readouterr().err
    # strings as a gallery; zero-shot from a labelled manifest
    assert mmjepa_cli.main(["embed", "--text", caption(1), caption(2), "--model", str(tmp_path / "model"),
                            "--output", str(tmp_path / "s"), "--quiet"]) == 0
    assert mmjepa_cli.main(["search", "--index", str(tmp_path / "s"), "--text", caption(2), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])[0]["results"][0]["key"] == caption(2)
    rows = [{"image": str(folder / f"{key(i)}.png"), "label": i % 3} for i in range(N)]
    (tmp_path / "labelled.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert mmjepa_cli.main(["eval", "zeroshot", str(tmp_path / "labelled.jsonl"), "--model", str(tmp_path / "model"),
                            "--modality", "image", "--classes", "one,two,three", "--templates", "the number {}",
                            "--quiet", "--json", str(tmp_path / "z.json")]) == 0
    z = json.loads((tmp_path / "z.json").read_text())
    assert z["items"] == N and z["classes"] == 3 and 0.0 <= z["accuracy"] <= 1.0
