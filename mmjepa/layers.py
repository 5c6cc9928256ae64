"""Transformer building blocks shared by every encoder and the predictor.

Parameter names follow the timm / I-JEPA ViT layout (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``) so that published ViT and I-JEPA checkpoints map onto them
one tensor to one tensor.

Attention has two kernels, chosen per call by ``attention(..., backend)``: PyTorch's fused
``F.scaled_dot_product_attention`` ("sdpa": flash / memory-efficient kernels on GPU) and plain
matmul attention ("matmul": ``softmax(q k^T / sqrt(d)) v`` as in the research I-JEPA code, the two
matmuls in the autocast dtype, the softmax in fp32). On a CPU with bf16 matrix units the matmul
form is the faster one under bf16 autocast, because SDPA's CPU flash kernel (its backward above all)
does not use them; ``"auto"`` therefore picks matmul on CPU in bf16/fp16 for sequences of at most
``MATMUL_MAX_TOKENS`` tokens (its (N, N) scores are materialised) and SDPA everywhere else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- positions
def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Fixed sin-cos embedding of 1-D ``positions`` (N,) -> (N, dim), as in MAE / I-JEPA."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (N, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding for a (grid_h, grid_w) grid in row-major order -> (h*w, dim).

    Half the channels encode the column, half the row (the MAE / I-JEPA convention: the first half
    uses the width coordinate).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (h*w,)
    cols = torch.arange(grid_w).repeat(grid_h)  # (h*w,)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


class RotaryEmbedding(nn.Module):
    """Axial rotary position embedding (RoPE) over integer coordinates with ``ndim`` axes.

    The head dim is split evenly between the axes; each axis rotates its pairs of channels by
    ``coord * theta^(-2i/d)``.
    """

    def __init__(self, head_dim: int, ndim: int = 1, theta: float = 10000.0):
        super().__init__()
        per_axis = head_dim // ndim
        if per_axis % 2 or per_axis * ndim != head_dim:
            raise ValueError(f"RoPE needs head_dim ({head_dim}) divisible by 2*ndim ({2 * ndim})")
        self.per_axis, self.theta, self.ndim = per_axis, theta, ndim
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        return 1.0 / self.theta ** (torch.arange(0, self.per_axis, 2, dtype=torch.float32) / self.per_axis)

    def reset_buffers(self) -> None:
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords (B, N, ndim) or (N, ndim) -> cos, sin of shape (B, 1, N, head_dim/2)."""
        if coords.dim() == 2:
            coords = coords.unsqueeze(0)
        angles = coords.float().unsqueeze(-1) * self.inv_freq  # (B, N, ndim, per_axis/2)
        angles = angles.flatten(-2).unsqueeze(1)  # (B, 1, N, head_dim/2)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, hd) by the angles in cos/sin (B, 1, N, hd/2); pairs are (even, odd) channels."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, hd/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


# ----------------------------------------------------------------------------- attention
ATTENTION_BACKENDS = ("auto", "sdpa", "matmul")
MATMUL_MAX_TOKENS = 1024  # "auto" materialises (N, N) scores only up to this sequence length
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def check_attention_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    return backend


def resolve_attention_backend(q: torch.Tensor, k: torch.Tensor, backend: str = "auto") -> str:
    """The kernel ``attention`` runs for these tensors: ``backend`` itself unless it is ``"auto"``,
    which means matmul on CPU when the compute dtype is bf16/fp16 (CPU autocast with a
    low-precision dtype, or low-precision tensors) and the sequences are at most
    ``MATMUL_MAX_TOKENS`` long, SDPA otherwise."""
    if backend != "auto":
        return check_attention_backend(backend)
    if q.device.type != "cpu" or max(q.shape[-2], k.shape[-2]) > MATMUL_MAX_TOKENS:
        return "sdpa"
    low = q.dtype in _LOW_PRECISION or (torch.is_autocast_enabled("cpu")
                                        and torch.get_autocast_dtype("cpu") in _LOW_PRECISION)
    return "matmul" if low else "sdpa"


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for q (B, H, Nq, d), k and v (B, H, Nk, d) -> (B, H, Nq, d).

    The matmuls run in the inputs' (or autocast's) dtype, the softmax in fp32. ``attn_mask`` as in
    SDPA: boolean (True = attend) or additive float, broadcastable to (B, H, Nq, Nk); a query whose
    keys are all masked gets 0, as SDPA returns."""
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (B, H, Nq, Nk) fp32
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    attn = scores.softmax(-1)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn = attn.masked_fill(~attn_mask, 0.0)  # fully masked rows: NaN -> 0
    return attn.to(v.dtype) @ v  # (B, H, Nq, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention (B, H, N, d) -> (B, H, N, d) through the kernel that
    ``resolve_attention_backend`` picks; ``attn_mask`` (B, 1, 1, N) bool, True = attend."""
    if resolve_attention_backend(q, k, backend) == "matmul":
        return matmul_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Switch every ``Attention`` layer under ``module`` to ``backend`` (no weights change)."""
    check_attention_backend(backend)
    for m in module.modules():
        if isinstance(m, Attention):
            m.backend = backend


# ----------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv matmul; the kernel is ``attention(..., backend)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = check_attention_backend(backend)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,  # (B, N, D)
        attn_mask: torch.Tensor | None = None,  # (B, 1, 1, N) bool, True = attend
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        # unbind along the qkv axis, then transpose: the same strided views as permute(2, 0, 3, 1, 4),
        # but the backward stacks the three gradients straight into qkv's layout (one copy, not two)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, H, N, hd) each
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = attention(q, k, v, attn_mask, self.backend)  # (B, H, N, hd)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6,
                 attention_backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attention_backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, attn_mask=None, rope=None):
        x = x + self.attn(self.norm1(x), attn_mask, rope)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm, with optional activation checkpointing."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float,
                 attention_backend: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, eps, attention_backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.gradient_checkpointing = False

    def forward(self, x, attn_mask=None, rope=None):
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, attn_mask, rope, use_reentrant=False)
            else:
                x = blk(x, attn_mask, rope)
        return self.norm(x)


def rescale_residual_init(blocks: nn.ModuleList) -> None:
    """I-JEPA's ``fix_init_weight``: divide each residual output projection by sqrt(2 * layer_id)."""
    for layer_id, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, K) -> (B, K, D): the I-JEPA ``apply_masks`` for one mask."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of x (..., D) over ``dim``, counting only entries where ``valid`` (x.shape[:-1], bool) is
    True (all of them when None); an all-padding slice gives 0."""
    if valid is None:
        return x.mean(dim)
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(dim) / w.sum(dim).clamp_min(1.0)


def key_padding_to_attn_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """valid (B, N) bool (True = real token) -> SDPA boolean mask (B, 1, 1, N), or None."""
    if valid is None:
        return None
    return valid[:, None, None, :]
