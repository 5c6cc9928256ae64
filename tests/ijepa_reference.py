"""A small re-implementation of the official I-JEPA encoder and predictor (facebookresearch/ijepa,
``src/models/vision_transformer.py``: ``VisionTransformer``, ``VisionTransformerPredictor``), written
for the conversion tests: the same parameter names, the same computation (explicit softmax
attention, numpy sin-cos tables stored as tensors, masks applied by gather, mask-major batches),
no dropout or drop-path. mmjepa's converted modules must reproduce it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) everywhere in I-JEPA


def sincos_1d_np(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=float) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_np(dim: int, grid_size: int) -> np.ndarray:
    """I-JEPA's ``get_2d_sincos_pos_embed``: meshgrid(w, h), the first half of the channels from grid[0] (w)."""
    g = np.arange(grid_size, dtype=float)
    grid = np.stack(np.meshgrid(g, g), axis=0).reshape(2, 1, grid_size, grid_size)
    return np.concatenate([sincos_1d_np(dim // 2, grid[0]), sincos_1d_np(dim // 2, grid[1])], axis=1)


def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """Gather the kept patches of each mask; the results are concatenated along the batch (mask-major)."""
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).repeat(1, 1, x.size(-1))) for m in masks], 0)


def repeat_interleave_batch(x: torch.Tensor, B: int, repeat: int) -> torch.Tensor:
    N = len(x) // B
    return torch.cat([torch.cat([x[i * B:(i + 1) * B] for _ in range(repeat)], 0) for i in range(N)], 0)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, img_size=32, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
                 qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.num_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim), requires_grad=False)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d_np(embed_dim, img_size // patch_size)).float()[None])
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=EPS)

    def forward(self, x, masks=None):
        x = self.patch_embed(x) + self.pos_embed
        if masks is not None:
            x = apply_masks(x, masks if isinstance(masks, list) else [masks])
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class VisionTransformerPredictor(nn.Module):
    def __init__(self, num_patches, embed_dim=32, predictor_embed_dim=16, depth=2, num_heads=2, mlp_ratio=4.0,
                 qkv_bias=True):
        super().__init__()
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        self.predictor_pos_embed = nn.Parameter(torch.zeros(1, num_patches, predictor_embed_dim), requires_grad=False)
        table = sincos_2d_np(predictor_embed_dim, int(num_patches**0.5))
        self.predictor_pos_embed.data.copy_(torch.from_numpy(table).float()[None])
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=EPS)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim, bias=True)

    def forward(self, x, masks_x, masks):
        masks_x = masks_x if isinstance(masks_x, list) else [masks_x]
        masks = masks if isinstance(masks, list) else [masks]
        B = len(x) // len(masks_x)
        x = self.predictor_embed(x)
        x = x + apply_masks(self.predictor_pos_embed.repeat(B, 1, 1), masks_x)
        _, n_ctxt, _ = x.shape
        pos_embs = apply_masks(self.predictor_pos_embed.repeat(B, 1, 1), masks)
        pos_embs = repeat_interleave_batch(pos_embs, B, repeat=len(masks_x))
        pred_tokens = self.mask_token.repeat(pos_embs.size(0), pos_embs.size(1), 1) + pos_embs
        x = torch.cat([x.repeat(len(masks), 1, 1), pred_tokens], dim=1)
        for blk in self.predictor_blocks:
            x = blk(x)
        x = self.predictor_norm(x)
        return self.predictor_proj(x[:, n_ctxt:])


def ijepa_loss(encoder, target_encoder, predictor, imgs, masks_enc, masks_pred):
    """One I-JEPA training loss (src/train.py): layer-normed target features gathered at each target
    mask (repeated per context mask), the predictor's outputs, smooth L1."""
    with torch.no_grad():
        h = F.layer_norm(target_encoder(imgs), (target_encoder.norm.normalized_shape[0],))
        B = len(h)
        h = repeat_interleave_batch(apply_masks(h, masks_pred), B, repeat=len(masks_enc))
    z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
    return F.smooth_l1_loss(z, h)


def randomize_(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Make every tensor matter: random values in biases, norms and the mask token too."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "pos_embed" not in name:
                p.add_(scale * torch.randn_like(p))
    return module


def official_checkpoint(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, pred_dim=16, pred_depth=2,
                        seed=0):
    """(encoder, target_encoder, predictor, checkpoint dict) in the layout of src/train.py's
    ``save_checkpoint``: DDP ``module.`` prefixes, an AdamW state, scalars."""
    torch.manual_seed(seed)
    encoder = randomize_(VisionTransformer(img_size, patch_size, 3, embed_dim, depth, num_heads)).eval()
    target = randomize_(VisionTransformer(img_size, patch_size, 3, embed_dim, depth, num_heads)).eval()
    predictor = randomize_(VisionTransformerPredictor(encoder.num_patches, embed_dim, pred_dim, pred_depth,
                                                      num_heads)).eval()
    params = [p for p in [*encoder.parameters(), *predictor.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

    def ddp(m):
        return {f"module.{k}": v.detach().clone() for k, v in m.state_dict().items()}

    ckpt = {"encoder": ddp(encoder), "predictor": ddp(predictor), "target_encoder": ddp(target),
            "opt": opt.state_dict(), "scaler": None, "epoch": 7, "loss": 0.123, "batch_size": 4,
            "world_size": 1, "lr": 1e-3}
    return encoder, target, predictor, ckpt
