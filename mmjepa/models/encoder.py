"""The modality-agnostic encoder: embed tokens, keep only the visible ones (gather), transform.

Design decisions:
- I-JEPA's context encoder drops the masked tokens (a gather of the visible ones), so they cost
  nothing; with ``mask_token`` it instead sees every token, the masked ones replaced by one learned
  mask embedding (+ their positions), as BERT and data2vec's student do: every layer then computes
  at the masked positions, and the predictor reads those latents as context too;
- :func:`encode_context` is the one place that turns a mask set into context latents, for training
  (``JepaView``) and span filling alike.
"""

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
    sample b. ``mask_token``: :meth:`forward_mask_tokens` exists (a learned (D,) ``mask_embed``).
    """

    def __init__(self, embed: nn.Module, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, eps: float = 1e-6, rope: bool = False, attention_backend: str = "auto",
                 mask_token: bool = False):
        super().__init__()
        self.embed = embed
        self.mask_embed = nn.Parameter(torch.zeros(dim)) if mask_token else None  # (D,), initialised by the model
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

    def forward_mask_tokens(
        self,
        inputs: torch.Tensor,
        keep: torch.Tensor,  # (B*R, K) indices of visible tokens
        keep_valid: torch.Tensor | None = None,  # (B*R, K) bool, False on padding entries of keep
        token_valid: torch.Tensor | None = None,  # (B, N) bool, False on padding tokens of the input
        repeats: int = 1,
    ) -> torch.Tensor:
        """Every token, those outside ``keep`` replaced by the mask embedding (plus their added
        positions) -> (B*R, N, D). Padding tokens (``token_valid`` False) are kept out of attention."""
        if self.mask_embed is None:
            raise ValueError("this encoder has no mask embedding: build it with mask_token=True")
        x = self.embed(inputs).contiguous()  # (B, N, D)
        B, N, D = x.shape
        kv = torch.ones_like(keep, dtype=torch.int32) if keep_valid is None else keep_valid.to(torch.int32)
        visible = torch.zeros(B * repeats, N, dtype=torch.int32, device=x.device).scatter_add_(1, keep, kv) > 0
        fill = self.mask_embed.to(x.dtype).expand(1, N, D)
        if getattr(self.embed, "add_positions", False):
            fill = fill + self.embed.pos_embed[:, :N].to(x.dtype)  # (1, N, D)
        if repeats > 1:
            x = x.repeat_interleave(repeats, 0)  # (B*R, N, D)
        x = torch.where(visible.unsqueeze(-1), x, fill)  # (B*R, N, D)
        if token_valid is not None:
            token_valid = token_valid.bool().repeat_interleave(repeats, 0) if repeats > 1 else token_valid.bool()
        rope = self.rope(self.embed.coords[:N]) if self.rope is not None else None
        return self.transformer(x, key_padding_to_attn_mask(token_valid), rope)  # (B*R, N, D)


def encode_context(
    encoder: nn.Module,
    inputs: torch.Tensor,
    keep: torch.Tensor,  # (B*R, K)
    keep_valid: torch.Tensor | None = None,  # (B*R, K)
    token_valid: torch.Tensor | None = None,  # (B, N)
    repeats: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The context latents of R mask sets per sample: (z (B*R, K', D), their token indices (B*R, K'),
    their validity (B*R, K') or None). An encoder with a mask embedding returns every token (K' = N,
    indices 0..N-1, validity = ``token_valid``); any other returns the ``keep`` tokens only."""
    if getattr(encoder, "mask_embed", None) is not None:
        z = encoder.forward_mask_tokens(inputs, keep, keep_valid, token_valid, repeats)  # (B*R, N, D)
        idx = torch.arange(z.shape[1], device=z.device).expand(z.shape[0], -1)
        if token_valid is not None:
            token_valid = token_valid.bool().repeat_interleave(repeats, 0) if repeats > 1 else token_valid.bool()
        return z, idx, token_valid
    if repeats == 1:
        z = encoder(inputs, keep, keep_valid)
    elif isinstance(encoder, Encoder):  # embed once, gather R times
        z = encoder(inputs, keep, keep_valid, repeats=repeats)
    else:  # a Hugging Face backbone embeds inside its own forward
        z = encoder(inputs.repeat_interleave(repeats, 0), keep, keep_valid)
    return z, keep, keep_valid  # (B*R, K, D) ...


def target_query_latents(z: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """Latents of every token z (B, N, D) (a context encoder that saw the targets as mask tokens) at
    the target indices (B, M, Kt) -> (B*M, Kt, D), the rows of the predictor's queries."""
    B, M, Kt = target_idx.shape
    return gather_tokens(z, target_idx.reshape(B, M * Kt)).reshape(B * M, Kt, z.shape[-1])
