"""The attention kernels: plain matmul attention agrees with SDPA (values, gradients, masks, RoPE),
``"auto"`` picks the kernel it documents, and ``attention_backend`` is a saved, validated config field."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmjepa.layers import (MATMUL_MAX_TOKENS, Attention, RotaryEmbedding, attention, resolve_attention_backend,
                           set_attention_backend)
from mmjepa.models import MMJepaConfig, MMJepaModel


def _pair(backend_a: str, backend_b: str, seed: int = 0):
    torch.manual_seed(seed)
    a = Attention(32, 4, backend=backend_a)
    b = Attention(32, 4, backend=backend_b)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("use_rope", [False, True])
def test_matmul_matches_sdpa_forward_and_backward(masked, use_rope):
    sdpa, mm = _pair("sdpa", "matmul")
    g = torch.Generator().manual_seed(1)
    B, N = 3, 10
    x = torch.randn(B, N, 32, generator=g)
    mask = None
    if masked:
        valid = torch.ones(B, N, dtype=torch.bool)
        valid[0, 7:] = False
        valid[1, 3:] = False
        mask = valid[:, None, None, :]  # (B, 1, 1, N)
    rope = None
    if use_rope:
        coords = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(5), indexing="ij"), -1).reshape(N, 2)
        rope = RotaryEmbedding(8, 2)(coords)
    outs, grads = [], []
    for layer in (sdpa, mm):
        xi = x.clone().requires_grad_(True)
        y = layer(xi, mask, rope)  # (B, N, D)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for g_mm, g_sdpa in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_mm, g_sdpa, rtol=1e-4, atol=1e-5)
    if masked:  # a masked key changes nothing: perturb the padding of sample 1
        x2 = x.clone()
        x2[1, 3:] += 5.0
        torch.testing.assert_close(mm(x2, mask, rope)[1, :3], outs[1][1, :3], rtol=1e-5, atol=1e-5)


def test_fully_masked_query_gives_zero_like_sdpa():
    q = torch.randn(2, 1, 4, 8)
    mask = torch.zeros(2, 1, 1, 4, dtype=torch.bool)
    mask[1] = True
    ref = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    out = attention(q, q, q, mask, "matmul")
    torch.testing.assert_close(out, ref)
    assert out[0].abs().max() == 0


def test_matmul_in_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, None, "matmul")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_auto_rule():
    short = torch.randn(1, 2, 16, 8)
    long = torch.randn(1, 2, MATMUL_MAX_TOKENS + 1, 8)
    assert resolve_attention_backend(short, short, "auto") == "sdpa"  # CPU fp32
    assert resolve_attention_backend(short.bfloat16(), short.bfloat16(), "auto") == "matmul"  # CPU bf16 tensors
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_attention_backend(short, short, "auto") == "matmul"  # CPU bf16 autocast
        assert resolve_attention_backend(long, long, "auto") == "sdpa"  # (N, N) scores too large
        assert resolve_attention_backend(short, short, "sdpa") == "sdpa"  # an explicit choice stands
    assert resolve_attention_backend(short, short, "matmul") == "matmul"
    with pytest.raises(ValueError, match="attention_backend"):
        resolve_attention_backend(short, short, "flash")


def _tiny_config(**kw) -> MMJepaConfig:
    return MMJepaConfig(modalities={"image": {"image_size": 16, "patch_size": 8}}, hidden_size=16,
                        num_hidden_layers=1, num_attention_heads=2, predictor_hidden_size=8,
                        predictor_num_hidden_layers=1, predictor_num_attention_heads=2, **kw)


def test_config_field_round_trips_and_reaches_every_layer(tmp_path):
    model = MMJepaModel(_tiny_config(attention_backend="matmul"))
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(layers) == 3 and all(m.backend == "matmul" for m in layers)  # encoder, target, predictor
    model.save_pretrained(tmp_path)
    assert MMJepaConfig.from_pretrained(tmp_path).attention_backend == "matmul"
    loaded = MMJepaModel.from_pretrained(tmp_path)
    assert all(m.backend == "matmul" for m in loaded.modules() if isinstance(m, Attention))
    set_attention_backend(loaded, "sdpa")
    assert all(m.backend == "sdpa" for m in loaded.modules() if isinstance(m, Attention))
    assert _tiny_config().attention_backend == "auto"


def test_invalid_backend_raises():
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        _tiny_config(attention_backend="flash")
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        Attention(16, 2, backend="Matmul")


def test_model_loss_under_bf16_autocast_agrees_between_kernels():
    from mmjepa.masking import MultiBlock2D

    cfg = dict(modalities={"image": {"image_size": 64, "patch_size": 8}}, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
               predictor_num_attention_heads=2, initializer_range=0.3)  # large weights: peaked attention
    masks = MultiBlock2D(grid=(8, 8), num_targets=2)(2, torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    losses, grads = {}, {}
    for backend in ("auto", "sdpa"):  # "auto" runs matmul attention here (CPU, bf16)
        torch.manual_seed(0)
        model = MMJepaModel(MMJepaConfig(attention_backend=backend, **cfg))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixel_values=images, masks={"image": masks})
        out.loss.backward()
        assert torch.isfinite(out.loss)
        losses[backend] = out.loss.item()
        # the qkv weights' gradients flow through the attention probabilities: they see the kernel
        grads[backend] = {n: p.grad for n, p in model.named_parameters()
                          if n.endswith("attn.qkv.weight") and p.grad is not None}
    assert losses["auto"] == pytest.approx(losses["sdpa"], rel=0.01)
    assert len(grads["auto"]) == 3
    for name, g in grads["sdpa"].items():
        assert (grads["auto"][name] - g).norm() <= 0.05 * g.norm(), name
