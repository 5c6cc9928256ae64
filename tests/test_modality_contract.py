"""The contract every modality plug-in must keep (as transformers' ModelTesterMixin does for
models): options, decoding, processing, tokens and positions, collation and validity, masks,
pooling, bad-input errors, and a training step through the core. Parametrized over every
registered modality (the built-in ones and the toy sensor plug-in of test_plugin_modality)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmjepa import MaskCollator, MMJepaConfig, MMJepaModel, MMJepaProcessor
from mmjepa.modalities import get_modality, registered_modalities
from mmjepa.tokenizer import train_tokenizer

import test_plugin_modality  # noqa: F401  (registers the toy "sensor" modality)
from test_text import corpus

D = 32


@dataclass
class Example:
    """Tiny options for a modality, raw values of different sizes, and how to encode one as a file."""

    options: dict[str, Any]
    raw: Callable[[int], Any]  # i -> one raw value
    encode: Callable[[Any], tuple[bytes, str]]  # raw value -> (file bytes, extension)
    bad: Any  # a value its processor must reject with ValueError/TypeError
    processor_kwargs: dict[str, Any] | None = None


def _png(arr: np.ndarray) -> tuple[bytes, str]:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), "png"


def _wav(x: np.ndarray) -> tuple[bytes, str]:
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue(), "wav"


def _npy(x: np.ndarray) -> tuple[bytes, str]:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue(), "npy"


TOKENIZER = train_tokenizer(texts=corpus(), vocab_size=80)

EXAMPLES = {
    "image": Example({"image_size": 32, "patch_size": 4, "min_keep": 2},
                     lambda i: np.random.default_rng(i).integers(0, 256, (12 + 4 * i, 20, 3), dtype=np.uint8), _png, np.zeros((2, 3, 4, 5, 6))),
    "audio": Example({"num_mel_bins": 32, "max_frames": 64, "patch_size": 16},
                     lambda i: (0.3 * np.sin(np.arange(4000 + 2000 * i) * 0.05)).astype(np.float32), _wav,
                     np.full(4000, np.nan, np.float32), {"sampling_rate": 16000}),
    "text": Example({"vocab_size": 80, "max_length": 16},
                    lambda i: " ".join(corpus(1, seed=i)[0].split()[: 3 + 2 * i]), lambda t: (t.encode(), "txt"), 12345),
    "sensor": Example({"length": 32, "channels": 2, "patch": 4},
                      lambda i: np.random.default_rng(i).standard_normal((2, 32)).astype(np.float32), _npy, np.zeros((3, 3))),
}
MODALITIES = sorted(EXAMPLES)


def build(name: str):
    mod = get_modality(name)
    cfg = mod.make_config(EXAMPLES[name].options)
    processor = mod.build_processor(cfg, tokenizer=TOKENIZER) if name == "text" else mod.build_processor(cfg)
    return mod, cfg, processor


def processed(name: str, n: int = 3) -> list[dict[str, Any]]:
    """Per-sample model inputs (the processor's batch of one, unbatched)."""
    _, _, processor = build(name)
    kwargs = EXAMPLES[name].processor_kwargs or {}
    out = []
    for i in range(n):
        one = processor(EXAMPLES[name].raw(i), **kwargs)
        out.append({k: v[0] for k, v in one.items()})
    return out


def test_every_registered_modality_has_a_contract_example():
    assert set(registered_modalities()) <= set(EXAMPLES)


@pytest.mark.parametrize("name", MODALITIES)
def test_options(name):
    mod = get_modality(name)
    assert mod.make_config() is not None  # every option has a default
    with pytest.raises(ValueError, match="unknown"):
        mod.make_config({"no_such_option": 1})
    assert mod.processor_arg and mod.input_key and mod.extensions


@pytest.mark.parametrize("name", MODALITIES)
def test_decode_and_process(name):
    mod, cfg, processor = build(name)
    raw = EXAMPLES[name].raw(0)
    data, ext = EXAMPLES[name].encode(raw)
    assert ext in mod.extensions
    decoded = mod.decode(data, ext, cfg)
    kwargs = EXAMPLES[name].processor_kwargs or {}
    a, b = processor(raw, **kwargs), processor(decoded, **({} if name == "audio" else kwargs))
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k  # the file decodes to the same input
    with pytest.raises((ValueError, TypeError)):
        processor(EXAMPLES[name].bad, **kwargs)
    with pytest.raises(ValueError):
        mod.decode(b"\x00\x01 not a file of this kind \xff", ext, cfg)


@pytest.mark.parametrize("name", MODALITIES)
def test_tokens_positions_and_validity(name):
    mod, cfg, _ = build(name)
    embed = mod.build_embed(cfg, D)
    batch = mod.collate(processed(name), cfg)
    x = batch[mod.input_key]
    tokens = embed(x)
    N = embed.num_tokens
    assert tokens.shape[0] == 3 and tokens.shape[2] == D and tokens.shape[1] <= N
    assert embed.coords.dtype == torch.long and embed.coords.shape[0] == N
    assert torch.equal(embed.grid_coords(), embed.coords)
    assert embed.position_table(16).shape == (N, 16)
    valid = mod.valid_tokens(batch)
    if valid is not None:
        assert valid.dtype == torch.bool and valid.shape == tokens.shape[:2] and valid.any(1).all()
    with pytest.raises(ValueError):
        embed(x[:, :1] if x.dim() > 2 else x.float())  # a malformed model input is refused, not broadcast


@pytest.mark.parametrize("name", MODALITIES)
def test_collate_matches_the_batched_processor(name):
    mod, cfg, processor = build(name)
    raws = [EXAMPLES[name].raw(i) for i in range(3)]
    batched = processor(raws, **(EXAMPLES[name].processor_kwargs or {}))
    collated = mod.collate(processed(name), cfg)
    assert torch.equal(collated[mod.input_key], batched[mod.input_key])
    v1, v2 = mod.valid_tokens(collated), mod.valid_tokens(batched)
    assert (v1 is None) == (v2 is None) and (v1 is None or torch.equal(v1, v2))


@pytest.mark.parametrize("name", MODALITIES)
def test_masks_pick_real_tokens_only(name):
    mod, cfg, _ = build(name)
    batch = mod.collate(processed(name, 4), cfg)
    N = mod.build_embed(cfg, D).num_tokens
    valid = mod.valid_tokens(batch)
    ms = mod.build_mask_sampler(cfg)(4, torch.Generator().manual_seed(0), valid=valid)
    assert ms["context"].shape[0] == 4 and ms["target"].dim() == 3 and ms["target"].shape[0] == 4
    for b in range(4):
        ctx = ms["context"][b][ms["context_valid"][b]] if "context_valid" in ms else ms["context"][b]
        tgt = ms["target"][b].flatten()
        if "target_valid" in ms:
            tgt = tgt[ms["target_valid"][b].flatten()]
        assert len(ctx) > 0 and len(tgt) > 0
        assert int(torch.cat([ctx, tgt]).max()) < N and int(torch.cat([ctx, tgt]).min()) >= 0
        assert not set(ctx.tolist()) & set(tgt.tolist())  # never predict what the context sees
        if valid is not None:
            assert valid[b, ctx].all() and valid[b, tgt].all()


@pytest.mark.parametrize("name", MODALITIES)
def test_pooling(name):
    mod, cfg, _ = build(name)
    batch = mod.collate(processed(name), cfg)
    n = mod.build_embed(cfg, D).num_tokens
    h = torch.randn(3, batch[mod.input_key].shape[1] if name == "text" else n, D)
    valid = mod.valid_tokens(batch)
    assert mod.pool(h, valid, cfg).shape == (3, D)
    probe = mod.probe_features(h, valid, cfg)
    assert probe.dim() == 2 and probe.shape[0] == 3 and torch.isfinite(probe).all()


@pytest.mark.parametrize("name", MODALITIES)
def test_a_model_of_the_modality_trains_and_embeds(name):
    mod, cfg, _ = build(name)
    config = MMJepaConfig(modalities={name: EXAMPLES[name].options}, hidden_size=D, num_hidden_layers=1,
                          num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
                          predictor_num_attention_heads=2)
    model = MMJepaModel(config)
    batch = MaskCollator.from_config(config, seed=0)(processed(name, 4))
    out = model(**batch)
    assert torch.isfinite(out.loss) and f"intra/{name}" in out.losses
    out.loss.backward()
    assert next(model.encoders[name].embed.parameters()).grad.abs().sum() > 0
    processor = MMJepaProcessor.from_config(config, **({name: build(name)[2]} if name == "text" else {}))
    inputs = processor(**{mod.processor_arg: [EXAMPLES[name].raw(i) for i in range(2)]},
                       **(EXAMPLES[name].processor_kwargs or {}))
    emb = model.embed(**inputs)[name]
    assert emb.shape == (2, D) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
