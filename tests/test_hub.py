"""The model as a Hugging Face citizen: the processor and the model round-trip through one folder
(bit-exact), the Auto classes load them, subsets of modalities and embedding-only checkpoints load,
the trainer's export is the same thing as ``save_pretrained``, a model card is written, and a Hub
repository loads offline from the Hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

import mmjepa.models.saving as saving
from mmjepa import MMJepaConfig, MMJepaModel, MMJepaProcessor
from mmjepa.engine import load_recipe, train
from mmjepa.tokenizer import train_tokenizer
from mmjepa_cli import main

WORDS = "zero one two three four five six seven eight nine the number a red car is spoken".split()
CAPTIONS = ["the number seven", "a red car", "nine is spoken"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(300)]
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(texts=texts, vocab_size=60).save_pretrained(path)
    return path


def tri_config(tokenizer_dir: Path, **kw) -> MMJepaConfig:
    mods = {"image": {"image_size": 16, "patch_size": 4, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
            "audio": {"num_mel_bins": 32, "max_frames": 64, "patch_size": 16, "mean": -3.0, "std": 2.5},
            "text": {"vocab_size": 60, "max_length": 12, "tokenizer": str(tokenizer_dir)}}
    return MMJepaConfig(modalities=mods, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                        objectives={"intra": {}, "cross": {"type": "cross"}, "pooled": {"type": "pooled"},
                                    "readout": {"type": "readout", "modality": "text"}}, **kw)


def raw_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    t = np.arange(6000) / 16000
    return {"images": torch.rand(3, 3, 20, 24, generator=g),
            "audio": [np.sin(2 * np.pi * f * t).astype(np.float32) for f in (220, 440, 880)],
            "sampling_rate": 16000, "text": CAPTIONS}


@pytest.fixture(scope="module")
def saved(tokenizer_dir, tmp_path_factory):
    torch.manual_seed(0)
    model = MMJepaModel(tri_config(tokenizer_dir))
    with torch.no_grad():  # centres and a predictor that differ from their init
        for name in model.modality_names:
            model.centers.get(name).normal_()
        model.predictor.modality_embed.normal_()
    model.eval()
    folder = tmp_path_factory.mktemp("hub") / "model"
    model.save_pretrained(folder)
    return model, folder


def test_a_saved_folder_holds_model_processor_and_card_and_points_nowhere_else(saved, tokenizer_dir):
    _, folder = saved
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)  # safetensors only
    for f in folder.glob("*.json"):
        text = f.read_text()
        assert str(tokenizer_dir) not in text and str(folder) not in text and "/tmp" not in text, f.name
    assert json.loads((folder / "config.json").read_text())["modalities"]["text"]["tokenizer"] == "."


def test_processor_round_trips_bit_exactly_through_auto_processor(saved, tokenizer_dir):
    model, folder = saved
    built = MMJepaProcessor.from_config(model.config)
    loaded = AutoProcessor.from_pretrained(folder)
    assert isinstance(loaded, MMJepaProcessor)
    a, b = built(**raw_inputs()), loaded(**raw_inputs())
    assert set(a) == set(b) == {"pixel_values", "input_features", "input_features_valid", "input_ids", "attention_mask"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the normalisation the processors were built with travelled (not the defaults)
    assert loaded.feature_extractor.cfg.mean == -3.0 and tuple(loaded.image_processor.cfg.image_std) == (0.2, 0.3, 0.25)


def test_sub_processors_load_through_their_own_auto_classes(saved):
    model, folder = saved
    built = MMJepaProcessor.from_config(model.config)
    raw = raw_inputs()
    image_processor = AutoImageProcessor.from_pretrained(folder)
    assert type(image_processor).__name__ == "MMJepaImageProcessor"
    assert torch.equal(image_processor(raw["images"])["pixel_values"], built(images=raw["images"])["pixel_values"])
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(feature_extractor).__name__ == "MMJepaAudioFeatureExtractor"
    assert torch.equal(feature_extractor(raw["audio"], sampling_rate=16000)["input_features"],
                       built(audio=raw["audio"], sampling_rate=16000)["input_features"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.get_vocab() == built.tokenizer.get_vocab()


def test_model_round_trips_bit_exactly_through_auto_model(saved):
    model, folder = saved
    loaded = AutoModel.from_pretrained(folder).eval()
    assert isinstance(loaded, MMJepaModel)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    inputs = MMJepaProcessor.from_pretrained(folder)(**raw_inputs())
    ea, eb = model.embed(**inputs), loaded.embed(**inputs)
    assert all(torch.equal(ea[m], eb[m]) for m in ea)
    # the predictor's modality rows keep their meaning although config.json sorts the modalities
    assert list(json.loads((folder / "config.json").read_text())["modalities"]) == ["audio", "image", "text"]
    assert torch.equal(model.predict_embedding("text", pixel_values=inputs["pixel_values"]),
                       loaded.predict_embedding("text", pixel_values=inputs["pixel_values"]))
    # the loaded config finds the tokenizer in the folder
    assert loaded.config.modalities["text"]["tokenizer"] == str(folder)


class NotATensor:  # what a malicious pickle could carry instead of tensors
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_weights_are_refused_unless_opted_in_and_then_read_as_tensors_only(saved, tmp_path):
    model, folder = saved
    with pytest.raises(ValueError, match="safetensors"):
        MMJepaModel.from_pretrained(folder, use_safetensors=False)
    with pytest.raises(ValueError, match="weights_only=False is refused"):
        MMJepaModel.from_pretrained(folder, weights_only=False, allow_pickle=True)
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for load in (MMJepaModel.from_pretrained, AutoModel.from_pretrained):  # a ValueError that says how to opt in
        with pytest.raises(ValueError, match=r"pickle weights \(pytorch_model.bin\).*allow_pickle=True"):
            load(pickled)
    loaded = MMJepaModel.from_pretrained(pickled, allow_pickle=True)  # the opt-in: torch.load(weights_only=True)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(AutoModel.from_pretrained(pickled, allow_pickle=True), MMJepaModel)
    # a pickle holding an arbitrary object is refused even with the opt-in
    torch.save({**model.state_dict(), "evil": NotATensor()}, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing pickle weights that hold more than tensors"):
        MMJepaModel.from_pretrained(pickled, allow_pickle=True)


def test_no_remote_code_is_needed_or_written(saved):
    _, folder = saved
    assert not list(folder.glob("*.py"))
    for f in folder.glob("*.json"):
        assert "auto_map" not in json.loads(f.read_text()), f.name
    assert isinstance(AutoModel.from_pretrained(folder, trust_remote_code=False), MMJepaModel)
    assert isinstance(AutoProcessor.from_pretrained(folder, trust_remote_code=False), MMJepaProcessor)
    assert type(AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)).__name__ == "MMJepaImageProcessor"


def test_a_subset_of_modalities_loads_and_embeds_as_the_full_model(saved, tmp_path):
    model, folder = saved
    sub = MMJepaModel.from_pretrained(folder, modalities=["image", "text"]).eval()
    assert sub.modality_names == ["image", "text"] and "audio" not in sub.encoders
    assert not any(k.startswith(("encoders.audio", "target_encoders.audio")) for k in sub.state_dict())
    assert "cross" in sub.config.objectives and "readout" in sub.config.objectives
    assert torch.equal(sub.predictor.modality_embed, model.predictor.modality_embed)  # the full model's rows
    inputs = MMJepaProcessor.from_config(model.config)(images=raw_inputs()["images"], text=CAPTIONS)
    full, part = model.embed(**inputs), sub.embed(**inputs)
    assert set(part) == {"image", "text"} and all(torch.equal(full[m], part[m]) for m in part)
    # the predictor of the subset predicts as the full one (text from image)
    assert torch.equal(model.predict_embedding("text", pixel_values=inputs["pixel_values"]),
                       sub.predict_embedding("text", pixel_values=inputs["pixel_values"]))
    sub.save_pretrained(tmp_path / "sub")
    again = MMJepaModel.from_pretrained(tmp_path / "sub").eval()
    assert all(torch.equal(a, b) for a, b in zip(sub.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="this model has"):
        MMJepaModel.from_pretrained(folder, modalities=["video"])


def test_an_embedding_only_checkpoint_holds_the_targets_and_embeds_the_same(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "emb", embedding_only=True)
    with safe_open(str(tmp_path / "emb" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("target_encoders.", "centers.")) for k in keys)
    loaded = MMJepaModel.from_pretrained(tmp_path / "emb").eval()
    assert loaded.config.checkpoint_contents == "embedding" and model.config.checkpoint_contents == "full"
    inputs = MMJepaProcessor.from_pretrained(tmp_path / "emb")(**raw_inputs())
    ea, eb = model.embed(**inputs), loaded.embed(**inputs)
    assert all(torch.equal(ea[m], eb[m]) for m in ea)
    for m in loaded.modality_names:  # context encoders start as the targets
        sa, sb = loaded.encoders[m].state_dict(), loaded.target_encoders[m].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_card_describes_the_model_and_keeps_a_users_readme(saved, tmp_path):
    model, folder = saved
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mmjepa\nlicense: apache-2.0")
    for text in ("| image | `pixel_values` | `images=` | multiblock |", "| text | `input_ids` | `text=` | span |",
                 "`cross` (cross, weight 1.0)", "AutoProcessor.from_pretrained", "## Masks"):
        assert text in card, text
    out = tmp_path / "with_metrics"
    model.save_pretrained(out, metrics={"audio_to_image_r1": 0.3456, "steps": 100})
    assert "| audio_to_image_r1 | 0.3456 |" in (out / "README.md").read_text()
    (out / "README.md").write_text("# my own notes\n")
    model.save_pretrained(out)
    assert (out / "README.md").read_text() == "# my own notes\n"


def test_push_to_hub_uploads_the_same_folder(saved, tmp_path, monkeypatch):
    model, folder = saved
    uploaded = {}

    class FakeApi:  # records the call instead of touching the network
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message=None):
            uploaded.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))

    monkeypatch.setattr(saving, "HfApi", FakeApi)
    model.save_pretrained(tmp_path / "push", push_to_hub=True, repo_id="org/name")
    assert uploaded["repo_id"] == "org/name"
    assert uploaded["files"] == sorted(p.name for p in folder.iterdir())


def test_trainer_export_is_a_save_pretrained_folder(tmp_path):
    recipe = Path(__file__).parent.parent / "recipes" / "image" / "digits_ijepa_cpu.yaml"
    result = train(load_recipe(recipe, ["train.max_steps=2", f"train.output_dir={tmp_path / 'run'}", "data.batch_size=8",
                                        "data.num_workers=0", "model.num_hidden_layers=1", "model.hidden_size=32",
                                        "model.num_attention_heads=2", "model.predictor_hidden_size=16",
                                        "model.predictor_num_hidden_layers=1", "model.predictor_num_attention_heads=2",
                                        "train.progress=false"]))
    export = result.export_dir
    result.model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} | {"recipe.yaml", "training_state.json"} == \
        {p.name for p in export.iterdir()}
    card = (export / "README.md").read_text()
    assert "Trained for 2 steps" in card and "built-in `digits`" in card
    loaded = MMJepaModel.from_pretrained(export)
    a, b = result.model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k].cpu(), b[k]) for k in a)
    assert isinstance(AutoProcessor.from_pretrained(export), MMJepaProcessor)


def test_a_hub_repository_loads_offline_from_the_hub_cache(saved, tmp_path):
    """The cache layout the Hub client writes (models--org--name/snapshots/REV + refs/main), with
    HF_HUB_OFFLINE=1 set before anything is imported."""
    model, folder = saved
    cache, rev = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--org--tri" / "snapshots" / rev
    shutil.copytree(folder, snapshot)
    (cache / "models--org--tri" / "refs").mkdir()
    (cache / "models--org--tri" / "refs" / "main").write_text(rev)
    out = tmp_path / "embeddings.pt"
    script = f"""
import torch, numpy as np, mmjepa
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("org/tri").eval()
processor = AutoProcessor.from_pretrained("org/tri")
t = np.arange(6000) / 16000
g = torch.Generator().manual_seed(0)
inputs = processor(images=torch.rand(3, 3, 20, 24, generator=g),
                   audio=[np.sin(2 * np.pi * f * t).astype(np.float32) for f in (220, 440, 880)],
                   sampling_rate=16000, text={CAPTIONS!r})
torch.save({{"emb": model.embed(**inputs), "tokenizer": model.config.modalities["text"]["tokenizer"]}}, {str(out)!r})
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HOME", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    assert got["tokenizer"] == "org/tri"
    want = model.embed(**MMJepaProcessor.from_pretrained(folder)(**raw_inputs()))
    assert all(torch.equal(want[m], got["emb"][m]) for m in want)


def test_the_push_command_writes_the_card_and_uploads_the_folder(saved, tmp_path, monkeypatch):
    _, folder = saved
    work = tmp_path / "model"
    shutil.copytree(folder, work)
    (work / "metrics.json").write_text(json.dumps({"text_to_image_r1": 0.5, "per_class": {"a": 1}}))
    r = subprocess.run([sys.executable, "-m", "mmjepa", "push", str(work), "org/tri", "--dry-run"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "would upload to org/tri: README.md, config.json, metrics.json, model.safetensors" in r.stdout
    card = (work / "README.md").read_text()
    assert "# org/tri" in card and "| text_to_image_r1 | 0.5 |" in card and "per_class" not in card
    uploaded = {}
    monkeypatch.setattr(saving, "HfApi", lambda token=None: type("Api", (), {
        "create_repo": lambda self, repo_id, private=None, exist_ok=False: type("R", (), {"repo_id": repo_id})(),
        "upload_folder": lambda self, repo_id, folder_path, commit_message=None: uploaded.update(
            repo=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))})())
    assert main(["push", str(work), "org/tri"]) == 0
    assert uploaded["repo"] == "org/tri" and "processor_config.json" in uploaded["files"]
