"""Embedding towers exported to ONNX and ``torch.export``: onnxruntime's and the program's outputs
equal ``model.embed`` within 1e-4 at several batch sizes and (text) sequence lengths with padding,
from one exported file per modality; the metadata, the ``mmjepa export`` round trip on a saved
model, and bad inputs."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402 - after the skip: the export extra installs both

import mmjepa_cli  # noqa: E402
from mmjepa import MMJepaConfig, MMJepaModel, MMJepaProcessor  # noqa: E402
from mmjepa.export import (EmbeddingTower, capture, check_onnx, export_onnx, export_program,  # noqa: E402
                           read_metadata)
from mmjepa.retrieval import model_identity  # noqa: E402

# torch.export.load reads weights from a read-only buffer and says so once
pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable")

TOKENIZER = Path(__file__).resolve().parent.parent / "recipes" / "multimodal" / "digits_tokenizer"
MODS = {"image": {"image_size": 16, "patch_size": 4},
        "audio": {"num_mel_bins": 32, "max_frames": 64, "patch_size": 16},  # a 2 x 4 (frequency x time) grid
        "text": {"vocab_size": 80, "max_length": 12, "tokenizer": str(TOKENIZER)}}
ALL = list(MODS)
ATOL = 1e-4
CAPTIONS = ["one", "seven two", "the number three", "four five six seven eight nine"]


def config() -> MMJepaConfig:
    return MMJepaConfig(modalities=MODS, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
                        objectives={"intra": {}})


@functools.lru_cache(maxsize=1)
def processor() -> MMJepaProcessor:
    return MMJepaProcessor.from_config(config())


def make_model(seed: int = 0) -> MMJepaModel:
    """A tiny tri-modal model whose context and target encoders differ and whose embedding
    centres are not zero (so that the export is checked to keep both choices)."""
    torch.manual_seed(seed)
    model = MMJepaModel(config()).eval()
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in ALL:
            model.centers.update(m, torch.randn(4, 32) + 0.5)
    return model


def batch(modality: str, size: int, tokens: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of ``size`` samples as the processors and collators give them, with padding."""
    g = torch.Generator().manual_seed(seed)
    if modality == "image":
        return {"pixel_values": torch.randn(size, 3, 16, 16, generator=g)}
    if modality == "audio":  # 1..4 real time patches per sample, the rest zero-padded and masked
        real = torch.arange(size) % 4 + 1
        feats = torch.randn(size, 32, 64, generator=g) * (torch.arange(64) < 16 * real[:, None, None])
        valid = (torch.arange(4)[None, :] < real[:, None]).repeat(1, 2)  # (B, 8) frequency-major tokens
        return {"input_features": feats, "input_features_valid": valid}
    texts = [CAPTIONS[(i + seed) % len(CAPTIONS)] for i in range(size)]
    out = dict(processor()(text=texts))  # (B, 12) ids and int64 mask
    if tokens is not None:  # a shorter padded batch, as a tokenizer padding to the longest gives
        out = {k: v[:, :tokens] for k, v in out.items()}
    return out


# batch sizes and sequence lengths each exported file is checked at (the export traced batch 2, length 12)
SHAPES = {"image": [(1, None), (5, None)], "audio": [(1, None), (4, None)], "text": [(3, 12), (1, 5), (4, 7)]}


@pytest.fixture(scope="module")
def model() -> MMJepaModel:
    return make_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, dict]:
    """Each modality written as ONNX and as a torch.export program (text with its token latents
    as a second output): image through the two export functions, audio and text traced once for
    both formats."""
    root = tmp_path_factory.mktemp("export")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        program = export_program(model, "image", root / "image.pt2")
        assert isinstance(program, torch.export.ExportedProgram)
        out = {"image": {"onnx": export_onnx(model, "image", root / "image.onnx"), "program": root / "image.pt2"}}
        for m in ["audio", "text"]:
            # the text embed tests token-id values: traced by draft_export, with a warning
            with pytest.warns(UserWarning, match="tests input values") if m == "text" else contextlib.nullcontext():
                cap = capture(model, m, return_tokens=m == "text")
            cap.check()
            out[m] = {"onnx": cap.save_onnx(root / f"{m}.onnx"), "program": cap.save_program(root / f"{m}.pt2")}
    finally:
        torch.set_num_threads(n)
    assert not any(module.training for module in model.modules())  # exporting left the eval model as it was
    return out


def feeds(modality: str, b: dict[str, torch.Tensor]) -> dict:
    names = {"image": ["pixel_values"], "audio": ["input_features", "input_features_valid"],
             "text": ["input_ids", "attention_mask"]}[modality]
    return {k: b[k].numpy() for k in names}


@pytest.mark.parametrize("modality", ALL)
def test_onnxruntime_equals_model_embed(model, exported, modality, one_thread):
    session = ort.InferenceSession(str(exported[modality]["onnx"]), providers=["CPUExecutionProvider"])
    for i, (size, tokens) in enumerate(SHAPES[modality]):
        b = batch(modality, size, tokens, seed=i)
        got = session.run(None, feeds(modality, b))
        want = model.embed(**b)[modality]
        assert got[0].shape == (size, 32)
        torch.testing.assert_close(torch.from_numpy(got[0]), want, atol=ATOL, rtol=0)
        if modality == "text":  # the token latents of model.encode, padding included
            torch.testing.assert_close(torch.from_numpy(got[1]), model.encode(**b)[modality], atol=ATOL, rtol=0)
    # dynamic axes by name: the batch everywhere, the tokens where the modality has a sequence
    graph = onnx.load(str(exported[modality]["onnx"])).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    expected = {"image": {"pixel_values": ["batch", 3, 16, 16], "embeddings": ["batch", 32]},
                "audio": {"input_features": ["batch", 32, 64], "input_features_valid": ["batch", 8],
                          "embeddings": ["batch", 32]},
                "text": {"input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"],
                         "embeddings": ["batch", 32], "last_hidden_state": ["batch", "tokens", 32]}}[modality]
    assert dims == expected


@pytest.mark.parametrize("modality", ALL)
def test_the_torch_export_program_equals_model_embed(model, exported, modality, one_thread):
    extra = {"mmjepa.json": ""}
    program = torch.export.load(exported[modality]["program"], extra_files=extra).module()
    assert json.loads(extra["mmjepa.json"])["mmjepa.modality"] == modality
    for i, (size, tokens) in enumerate(SHAPES[modality]):
        b = batch(modality, size, tokens, seed=i)
        args = list(feeds(modality, b))
        got = program(*(b[k] for k in args))
        got = got[0] if isinstance(got, tuple) else got
        torch.testing.assert_close(got, model.embed(**b)[modality], atol=ATOL, rtol=0)


def test_the_metadata_describes_the_export(model, exported):
    meta = read_metadata(exported["text"]["onnx"])
    assert meta["modality"] == "text" and meta["inputs"] == ["input_ids", "attention_mask"]
    assert meta["outputs"] == ["embeddings", "last_hidden_state"] and meta["dim"] == 32
    assert meta["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "tokens"}
    assert meta["encoder"] == "target" and meta["normalized"] is True and meta["centered"] is True
    assert meta["model_identity"] == model_identity(model)  # the identity galleries are bound to
    assert meta["modality_options"]["max_length"] == 12
    audio = read_metadata(exported["audio"]["onnx"])
    assert audio["inputs"] == ["input_features", "input_features_valid"]
    assert audio["dynamic_axes"]["input_features"] == {"0": "batch"}  # a fixed frame count
    assert read_metadata(exported["image"]["onnx"])["inputs"] == ["pixel_values"]


@pytest.mark.parametrize("modality", ALL)
def test_the_tower_is_embed_and_encode_for_either_encoder(model, modality):
    b = batch(modality, 3, seed=5)
    args = [b[k] for k in feeds(modality, b)]
    for context in (False, True):
        tower = EmbeddingTower(model, modality, use_context_encoder=context, return_tokens=True)
        emb, tokens = tower(*args)
        torch.testing.assert_close(emb, model.embed(use_target=not context, **b)[modality], atol=1e-6, rtol=0)
        torch.testing.assert_close(tokens, model.encode(use_target=not context, **b)[modality], atol=1e-6, rtol=0)
    raw = EmbeddingTower(model, modality, normalize=False, center=False)(*args)
    torch.testing.assert_close(raw, model.embed(normalize=False, center=False, **b)[modality], atol=1e-6, rtol=0)
    # the two encoders really differ here, so the option is tested
    assert not torch.allclose(model.embed(use_target=False, **b)[modality], model.embed(**b)[modality], atol=1e-3)


def test_a_check_against_another_model_fails(exported):
    """The ONNX check is not vacuous: the file of one model does not pass as another's."""
    other = make_model(seed=1)
    with pytest.raises(ValueError, match="differs from PyTorch"):
        check_onnx(exported["image"]["onnx"], other)


def test_bad_inputs_are_refused(model, exported):
    with pytest.raises(ValueError, match="has no 'video' modality"):
        EmbeddingTower(model, "video")
    text = ort.InferenceSession(str(exported["text"]["onnx"]), providers=["CPUExecutionProvider"])
    long = {k: torch.ones(1, 13, dtype=torch.long).numpy() for k in ("input_ids", "attention_mask")}
    with pytest.raises(Exception):  # longer than max_length: no position for the 13th token
        text.run(None, long)
    program = torch.export.load(exported["text"]["program"]).module()
    with pytest.raises(Exception):  # the program checks its dims' ranges
        program(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.long))
    image = ort.InferenceSession(str(exported["image"]["onnx"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dim|shape"):  # image sides are fixed
        image.run(None, {"pixel_values": torch.randn(1, 3, 20, 20).numpy()})


def test_export_from_the_command_line(model, tmp_path, capsys, one_thread):
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "audio.onnx"
    assert mmjepa_cli.main(["export", str(tmp_path / "model"), "--modality", "audio", "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "inputs input_features, input_features_valid" in said and "onnxruntime = PyTorch within" in said
    loaded = MMJepaModel.from_pretrained(tmp_path / "model")
    b = batch("audio", 3)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds("audio", b))[0]
    torch.testing.assert_close(torch.from_numpy(got), loaded.embed(**b)["audio"], atol=ATOL, rtol=0)
    assert read_metadata(out)["model_identity"] == model_identity(loaded)
    # the torch format, the context encoder
    pt2 = tmp_path / "image.pt2"
    assert mmjepa_cli.main(["export", str(tmp_path / "model"), "--modality", "image", "--format", "torch",
                            "--use-context-encoder", "--output", str(pt2)]) == 0
    b = batch("image", 2)
    got = torch.export.load(pt2).module()(b["pixel_values"])
    torch.testing.assert_close(got, loaded.embed(use_target=False, **b)["image"], atol=ATOL, rtol=0)


def test_the_command_line_says_what_is_wrong_in_one_line(model, tmp_path, capsys, monkeypatch):
    model.save_pretrained(tmp_path / "model")
    capsys.readouterr()  # the saving's progress bar
    cases = [
        (["export", str(tmp_path / "missing"), "--modality", "image", "--output", "x.onnx"], "no such folder"),
        (["export", str(tmp_path / "model"), "--modality", "video", "--output", "x.onnx"],
         "has no 'video' modality (it has "),
        (["export", str(tmp_path / "model"), "--modality", "image", "--format", "torch", "--opset", "18",
          "--output", "x.pt2"], "--opset applies to --format onnx only"),
        (["export", str(tmp_path / "model"), "--modality", "audio", "--opset", "23", "--output", "x.onnx"],
         "opset 23: from opset 23 attention is written as ONNX's Attention op"),
    ]
    for argv, message in cases:
        assert mmjepa_cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if line.startswith("mmjepa export:")]  # not the progress bars
        assert len(said) == 1 and message in said[0] and "Traceback" not in err, err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were not installed
    assert mmjepa_cli.main(["export", str(tmp_path / "model"), "--modality", "image", "--output",
                            str(tmp_path / "x.onnx")]) == 2
    assert "pip install 'mmjepa[export]'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
