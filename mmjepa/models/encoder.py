"""The modality-agnostic encoder: embed tokens, keep only the visible ones (gather), transform."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import RotaryEmbedding, Transformer, gather_tokens, key_padding_to_attn_mask


class Encoder(nn.Module):
    """A ViT-style encoder over one modality's tokens.

    ``embed`` (from the modality plug-in) maps the model input to (B, N, D) tokens; the encoder then
    keeps the tokens named by ``keep`` (B, K) — so masked tokens cost nothing — and runs the blocks.
    With ``rope`` the positions enter as rotary embeddings in every attention layer instead of being
    added once by ``embed``. ``repeats`` R > 1 (several mask sets per sample): the tokens are
    embedded once per sample and ``keep`` (B*R, K) holds R masks per sample, row b*R + r the r-th of
    sample b.
    """

    def __init__(self, embed: nn.Module, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, eps: float = 1e-6, rope: bool = False, attention_backend: str = "auto"):
        super().__init__()
        self.embed = embed
        self.transformer = Transformer(dim, depth, num_heads, mlp_ratio, qkv_bias, eps, attention_backend)
        self.rope = RotaryEmbedding(dim // num_heads, embed.coords.shape[-1]) if rope else None

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.blocks

    def forward(
        self,
        inputs: torch.Tensor,
        keep: torch.Tensor | None = None,  # (B, K) indices of visible tokens, or None for all
        valid: torch.Tensor | None = None,  # (B, K) bool, False on padding entries
        repeats: int = 1,  # R mask sets per sample: keep and valid are (B*R, K)
    ) -> torch.Tensor:
        # (B, N, D); made contiguous once: a patch embedding's (B, D, N) -> (B, N, D) transpose would
        # otherwise carry its strided layout through every residual add and make each LayerNorm copy
        x = self.embed(inputs).contiguous()
        if valid is not None and keep is None and tuple(valid.shape) != tuple(x.shape[:2]):
            raise ValueError(f"the token validity mask must have shape (B, N) = {tuple(x.shape[:2])} for these "
                             f"inputs, got {tuple(valid.shape)}")
        coords = self.embed.coords[: x.shape[1]] if self.rope is not None else None  # (N, ndim); a shorter text: its first N
        if repeats > 1 and keep is None:
            raise ValueError("repeats > 1 needs `keep`, the (B*R, K) indices of each mask set")
        if keep is not None:
            if repeats == 1:
                x = gather_tokens(x, keep)  # (B, K, D)
            else:  # row b*R + r gathers from sample b, without a (B*R, N, D) copy
                B, N, D = x.shape
                offset = torch.arange(B, device=x.device).repeat_interleave(repeats) * N  # (B*R,)
                x = x.reshape(B * N, D)[keep + offset[:, None]]  # (B*R, K, D)
            if coords is not None:
                coords = coords[keep]  # (B*R, K, ndim)
        rope = self.rope(coords) if coords is not None else None
        return self.transformer(x, key_padding_to_attn_mask(valid), rope)  # (B, K, D)
