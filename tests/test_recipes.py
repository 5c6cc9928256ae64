"""Recipes: every YAML under recipes/ loads, builds its model and data pipeline on tiny data and
runs a training forward; overrides; unknown keys and bad values are rejected naming the key."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmjepa import MMJepaModel
from mmjepa.data import DataPipeline, iterate_epoch, model_inputs
from mmjepa.datasets import digits
from mmjepa.shards import write_shards
from mmjepa.engine import apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").rglob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """Two shards of 4 real digit images each (jpg + png members, a caption, a label)."""
    out = tmp_path_factory.mktemp("tiny") / "shards"
    samples = []
    for i, it in enumerate(digits("all")[:8]):
        buf = io.BytesIO()
        Image.fromarray(np.repeat(it["image"][..., None], 3, 2)).save(buf, format="JPEG")
        samples.append({"__key__": f"t{i}", "jpg": buf.getvalue(), "txt": f"the digit {it['label']}".encode(),
                        "cls": str(it["label"]).encode()})
    write_shards(samples, out, max_count=4, progress=False)
    return out


def test_recipes_exist():
    names = {p.relative_to(p.parents[1]).as_posix() for p in RECIPES}
    assert {"image/digits_ijepa_cpu.yaml", "image/ijepa_vitb16_imagenet.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_and_runs_on_tiny_data(path, tiny_shards, tmp_path):
    """Full-width model (depth cut to 1 block to stay fast), the recipe's modalities and masks;
    sharded / streamed sources are pointed at tiny local shards."""
    recipe = load_recipe(path)
    config = recipe.model_config()  # the real size validates
    assert config.hidden_size % config.num_attention_heads == 0
    raw = recipe.to_dict()
    for src in raw["data"]["sources"]:
        if src["type"] in ("shards", "hf"):
            src.update(urls=str(tiny_shards) if src["type"] == "shards" else [str(p) for p in sorted(tiny_shards.glob("*.tar"))],
                       num_samples=8, path="webdataset" if src["type"] == "hf" else src.get("path"))
    raw["data"].update(batch_size=2, num_workers=0, epoch_samples=None)
    raw["model"].update(num_hidden_layers=1, predictor_num_hidden_layers=1)
    text = raw["model"].get("modalities", {}).get("text")
    if text and text.get("tokenizer") and not Path(text["tokenizer"]).exists():  # made by the user (see the recipe)
        text["tokenizer"] = str(Path(__file__).resolve().parent.parent / "recipes/multimodal/digits_tokenizer")
    raw["train"].update(output_dir=str(tmp_path / "out"))
    small = load_recipe(raw)
    try:
        pipe = DataPipeline(small.data, small.model_config())
    except FileNotFoundError as err:  # fsdd / shakespeare live in $MMJEPA_DATA_DIR
        if "MMJEPA_DATA_DIR" in str(err):
            pytest.skip(str(err))
        raise
    batch = next(iterate_epoch(pipe))
    model = MMJepaModel(small.model_config())
    out = model(**model_inputs(batch))
    assert torch.isfinite(out.loss)
    assert {f"intra/{m}" for m in batch["masks"]} <= set(out.losses)  # + readout, sigreg ...


def test_digits_recipe_uses_the_builtin_digits_on_an_8x8_grid():
    r = load_recipe(Path(__file__).resolve().parent.parent / "recipes/image/digits_ijepa_cpu.yaml")
    assert [s.type for s in r.data.sources] == ["builtin"] and r.data.sources[0].name == "digits"
    img = r.model_config().modality_config("image")
    assert img.patch_size == 8 and img.grid == (8, 8)


def test_imagenet_recipe_matches_the_paper():
    r = load_recipe(Path(__file__).resolve().parent.parent / "recipes/image/ijepa_vitb16_imagenet.yaml")
    c = r.model_config()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (768, 12, 12)
    img = c.modality_config("image")
    assert (img.image_size, img.patch_size, img.num_targets) == (224, 16, 4)
    assert tuple(img.target_scale) == (0.15, 0.2) and tuple(img.context_scale) == (0.85, 1.0)
    assert (r.optim.lr, r.optim.final_weight_decay, c.ema_momentum_start) == (1e-3, 0.4, 0.996)
    assert r.train.mixed_precision == "bf16" and r.train.epochs == 600


BASE = {"model": {"preset": "tiny", "num_hidden_layers": 1, "modalities": {"image": {"image_size": 32, "patch_size": 4}}},
        "data": {"sources": [{"type": "builtin", "name": "digits"}]},
        "train": {"max_steps": 3}}


@pytest.mark.parametrize("overrides,check", [
    (["train.max_steps=50"], lambda r: r.train.max_steps == 50),
    (["optim.lr=1e-3"], lambda r: r.optim.lr == 1e-3),  # YAML reads 1e-3 as a string
    (["model.hidden_size=64", "model.num_attention_heads=2"], lambda r: r.model_config().hidden_size == 64),
    (["model.modalities.image.patch_size=8"], lambda r: r.model_config().modality_config("image").patch_size == 8),
    (["data.sources.0.weight=2"], lambda r: r.data.sources[0].weight == 2.0),
    (["data.sources=[{type: builtin, name: digits, split: test}]"], lambda r: r.data.sources[0].split == "test"),
    (["optim.betas=[0.9, 0.95]"], lambda r: r.optim.betas == (0.9, 0.95)),
    (["train.tracker=none"], lambda r: r.train.tracker is None),
    (["train.epochs=2", "train.max_steps=null"], lambda r: r.train.epochs == 2.0 and r.train.max_steps is None),
])
def test_overrides(overrides, check):
    assert check(load_recipe(BASE, overrides))


@pytest.mark.parametrize("overrides,message", [
    (["train.max_step=5"], "train.max_step"),
    (["train.max_steps=ten"], "train.max_steps: Value 'ten' of type 'str' could not be converted to Integer"),
    (["train.max_steps=0"], "train.max_steps must be >= 1"),
    (["train.mixed_precision=fp8"], "train.mixed_precision must be one of"),
    (["optim.lr=fast"], "optim.lr: Value 'fast' of type 'str' could not be converted to Float"),
    (["optim.betas=[0.9]"], "optim.betas must have 2 values"),
    (["optim.clip_grad=-1"], "optim.clip_grad must be > 0"),
    (["data.batch_size=0"], "data.batch_size must be >= 1"),
    (["data.sources.0.kind=x"], "data.sources.0.kind"),
    (["data.sources.0.type=tfrecord"], "data.sources.0.type must be one of"),
    (["data.sources.3.weight=1"], "data.sources.3"),
    (["data.num_workers=two"], "data.num_workers: Value 'two'"),
    (["model.hidden_sise=64"], "model.hidden_sise"),
    (["model.hidden_size=100"], "hidden_size"),
    (["model.preset=huge"], "model.preset"),
    (["model.modalities.image.patch_sise=8"], "model.modalities.image"),
    (["model.modalities.image.patch_size=eight"], "model.modalities.image.patch_size: Value 'eight'"),
    (["model.objectives.intra.loss=huber"], "model.objectives.intra.loss must be one of"),
    (["model.objectives.foo.weight=1"], "model.objectives.foo: unknown objective type"),
    (["name=[1]"], "name: expected a string"),
    (["model.modalities.video.fps=8"], "model.modalities.video"),
    (["trainer.max_steps=3"], "trainer"),
    (["train.max_steps"], "key=value"),
])
def test_bad_recipes_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_recipe(BASE, overrides)


def test_missing_sections_and_files(tmp_path):
    with pytest.raises(ValueError, match="data"):
        load_recipe({"train": {"max_steps": 1}})
    with pytest.raises(ValueError, match="max_steps or epochs"):
        load_recipe({**BASE, "train": {}})
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "nope.yaml")


def test_apply_overrides_creates_nested_mappings():
    raw = apply_overrides({"model": {}}, ["model.modalities.image.image_size=64"])
    assert raw == {"model": {"modalities": {"image": {"image_size": 64}}}}


def test_resolved_recipe_roundtrip():
    r = load_recipe(BASE, ["optim.lr=2e-3"])
    assert load_recipe(r.to_dict()) == r
