"""The narrow cross-modal predictor: context latents + query tokens -> predicted target latents."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import RotaryEmbedding, Transformer, key_padding_to_attn_mask


class Predictor(nn.Module):
    """I-JEPA's predictor, generalised to several modalities.

    Context latents of any modalities (encoder width) are projected to the predictor width and given
    their positions (+ a modality embedding when there is more than one modality); each target group
    becomes query tokens = the learned ``mask_token`` + the position of each target token (+ the
    target modality's embedding). Every target group is predicted in its own sequence
    ``[context, queries]`` — the I-JEPA computation — and only the query outputs are projected back
    to the encoder width.

    ``context_once``: the context is encoded once per sample for all its target groups instead.
    One sequence ``[context, queries_1, ..., queries_M]`` runs under the block attention mask of
    :func:`block_attention_mask`: context tokens attend only to context tokens, each group's queries
    to the context and to their own group, never to another group's. The query outputs then equal
    those of M separate sequences ``[context, queries_m]`` in which the context does not attend to
    the queries — which is *not* I-JEPA's computation: there the context tokens also attend to the
    group's queries (and so differ from group to group). The cost falls from M (Nc + Kq) tokens per
    sample to Nc + M Kq (linear layers) and from M (Nc + Kq)^2 to (Nc + M Kq)^2 attention scores.
    """

    def __init__(self, enc_dim: int, dim: int, depth: int, num_heads: int, embeds: dict[str, nn.Module], mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6,
                 rope: bool = False, modality_order: list[str] | None = None, attention_backend: str = "auto",
                 context_once: bool = False):
        super().__init__()
        self.context_once = context_once
        # rows of the modality-embedding table: the modalities of ``embeds``, or (a model loaded with
        # only some of its modalities) the full model's order, so that each row keeps its meaning
        self.modalities = list(modality_order or embeds)
        if not set(embeds) <= set(self.modalities):
            raise ValueError(f"modality_order {self.modalities} lacks some of {list(embeds)}")
        self.predictor_embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), dim)) if len(self.modalities) > 1 else None
        self.rope = None
        self.dim = dim
        # functions that compute each modality's fixed tables (plain callables, not submodules)
        self._table_fns = {k: (e.position_table, e.grid_coords) for k, e in embeds.items()}
        self._use_rope = rope
        for name, (table, coords) in self._tables().items():
            self.register_buffer(f"pos_{name}", table, persistent=False)  # (N, Dp)
            self.register_buffer(f"coords_{name}", coords, persistent=False)  # (N, ndim)
        if rope:
            self.rope = RotaryEmbedding(dim // num_heads, max(e.coords.shape[-1] for e in embeds.values()))
        self.transformer = Transformer(dim, depth, num_heads, mlp_ratio, qkv_bias, eps, attention_backend)
        self.predictor_proj = nn.Linear(dim, enc_dim)

    def _tables(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for name, (table_fn, coords_fn) in self._table_fns.items():
            coords = coords_fn()
            table = table_fn(self.dim) if not self._use_rope else torch.zeros(coords.shape[0], 0)
            out[name] = (table, coords)
        return out

    def reset_buffers(self) -> None:
        """Recompute the fixed position tables (they are not saved in checkpoints)."""
        dev = self.mask_token.device
        for name, (table, coords) in self._tables().items():
            setattr(self, f"pos_{name}", table.to(dev))
            setattr(self, f"coords_{name}", coords.to(dev))

    def _position(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        table = getattr(self, f"pos_{name}")  # (N, Dp)
        return table[idx] if table.shape[-1] else 0.0

    def _coords(self, name: str, idx: torch.Tensor, ndim: int) -> torch.Tensor:
        c = getattr(self, f"coords_{name}")[idx]  # (..., k)
        return torch.nn.functional.pad(c, (0, ndim - c.shape[-1]))

    def _mod(self, name: str):
        if self.modality_embed is None:
            return 0.0
        return self.modality_embed[self.modalities.index(name)]

    def embed_context(self, context: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]]):
        """Context latents of any modalities -> predictor tokens (B, Nc, Dp) with their positions and
        modality embeddings, validity (B, Nc) or None, and RoPE coordinates (B, Nc, ndim) or None."""
        ctx, ctx_coords = [], []
        ndim = self.rope.ndim if self.rope is not None else 0
        for name, z, idx, valid in context:
            ctx.append(self.predictor_embed(z) + self._position(name, idx) + self._mod(name))  # (B, Kc, Dp)
            if self.rope is not None:
                ctx_coords.append(self._coords(name, idx, ndim))
        x = torch.cat(ctx, 1) if len(ctx) > 1 else ctx[0]  # (B, Nc, Dp)
        valid = None
        if any(v is not None for _, _, _, v in context):
            valid = torch.cat([v if v is not None else torch.ones(z.shape[:2], dtype=torch.bool, device=x.device)
                               for _, z, _, v in context], 1)
        coords = torch.cat(ctx_coords, 1) if self.rope is not None else None
        return x, valid, coords

    def run(self, x: torch.Tensor, valid: torch.Tensor | None, coords: torch.Tensor | None, q: torch.Tensor,
            q_valid: torch.Tensor | None, q_coords: torch.Tensor | None) -> torch.Tensor:
        """Context tokens x (B, Nc, Dp) + query tokens q (B, M, Kq, Dp) -> predictions (B*M, Kq, De).

        Each group m of sample b is its own sequence [context_b, queries_bm] (``context_once``: one
        sequence [context_b, queries_b1, ..., queries_bM] under a block mask); ``q_valid`` (B*M, Kq)
        and ``q_coords`` (B*M, Kq, ndim) as the context's."""
        if self.context_once:
            return self._run_context_once(x, valid, coords, q, q_valid, q_coords)
        B, M, Kq = q.shape[:3]
        Nc = x.shape[1]
        # written with one copy (the context broadcast over the M groups) instead of repeat_interleave + cat
        x = torch.cat([x.unsqueeze(1).expand(B, M, Nc, x.shape[-1]), q], 2)
        x = x.reshape(B * M, Nc + Kq, -1)  # (B*M, Nc+Kq, Dp), sample-major
        attn_mask = None
        if q_valid is not None or valid is not None:
            cv = valid if valid is not None else torch.ones(B, Nc, dtype=torch.bool, device=x.device)
            cv = cv.repeat_interleave(M, 0) if M > 1 else cv
            tv = q_valid if q_valid is not None else torch.ones(B * M, Kq, dtype=torch.bool, device=x.device)
            attn_mask = key_padding_to_attn_mask(torch.cat([cv, tv], 1))
        rope = None
        if self.rope is not None:
            cc = coords.repeat_interleave(M, 0) if M > 1 else coords
            rope = self.rope(torch.cat([cc, q_coords], 1))
        x = self.transformer(x, attn_mask, rope)
        return self.predictor_proj(x[:, Nc:])  # (B*M, Kq, De)

    def _run_context_once(self, x: torch.Tensor, valid: torch.Tensor | None, coords: torch.Tensor | None,
                          q: torch.Tensor, q_valid: torch.Tensor | None, q_coords: torch.Tensor | None) -> torch.Tensor:
        """:meth:`run` with the context encoded once per sample: one sequence [context, queries of
        all M groups] (B, Nc + M*Kq, Dp) under :func:`block_attention_mask` -> (B*M, Kq, De)."""
        B, M, Kq, Dp = q.shape
        Nc = x.shape[1]
        x = torch.cat([x, q.reshape(B, M * Kq, Dp)], 1)  # (B, Nc+M*Kq, Dp)
        attn_mask = block_attention_mask(Nc, M, Kq, x.device)[None, None]  # (1, 1, L, L)
        if q_valid is not None or valid is not None:  # and no attention to padding keys
            cv = valid if valid is not None else torch.ones(B, Nc, dtype=torch.bool, device=x.device)
            tv = q_valid.reshape(B, M * Kq) if q_valid is not None else torch.ones(B, M * Kq, dtype=torch.bool,
                                                                                 device=x.device)
            attn_mask = attn_mask & key_padding_to_attn_mask(torch.cat([cv, tv], 1))  # (B, 1, L, L)
        rope = None
        if self.rope is not None:
            rope = self.rope(torch.cat([coords, q_coords.reshape(B, M * Kq, -1)], 1))
        x = self.transformer(x, attn_mask, rope)
        return self.predictor_proj(x[:, Nc:].reshape(B * M, Kq, Dp))  # (B*M, Kq, De)

    def forward(
        self,
        context: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]],
        target_name: str,
        target_idx: torch.Tensor,  # (B, M, Kt)
        target_valid: torch.Tensor | None = None,  # (B, M, Kt)
        query_latents: torch.Tensor | None = None,  # (B*M, Kt, De)
    ) -> torch.Tensor:
        """``context``: list of (modality, latents (B, Kc, De), idx (B, Kc), valid (B, Kc) or None).
        ``query_latents``: encoder latents at the target positions (a context encoder that saw them
        as mask tokens), projected like the context and added to the queries, and added to the
        output: the predictor then refines the encoder's own latent at each masked position (a
        residual around it) instead of building it from a mask query alone.

        Returns predictions (B*M, Kt, De), sample-major (row b*M + m is sample b, group m).
        """
        B, M, Kt = target_idx.shape
        x, valid, coords = self.embed_context(context)
        flat_idx = target_idx.reshape(B * M, Kt)
        q = self.mask_token + self._position(target_name, flat_idx) + self._mod(target_name)  # (B*M, Kt, Dp)
        q = q.expand(B * M, Kt, -1) if q.dim() < 3 or q.shape[0] == 1 else q
        if query_latents is not None:
            q = q + self.predictor_embed(query_latents)  # (B*M, Kt, Dp)
        q_coords = self._coords(target_name, flat_idx, self.rope.ndim) if self.rope is not None else None
        tv = target_valid.reshape(B * M, Kt) if target_valid is not None else None
        out = self.run(x, valid, coords, q.reshape(B, M, Kt, -1), tv, q_coords)  # (B*M, Kt, De)
        return out if query_latents is None else out + query_latents

    def predict_pooled(self, context: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]],
                       target_name: str, token: torch.Tensor) -> torch.Tensor:
        """One query per sample — ``token`` (1, 1, Dp) + the target modality's embedding, no position
        — whose output predicts the target modality's pooled latent -> (B, De)."""
        x, valid, coords = self.embed_context(context)
        B = x.shape[0]
        q = (token + self._mod(target_name)).expand(B, 1, 1, -1)  # (B, 1, 1, Dp)
        q_coords = None
        if self.rope is not None:
            q_coords = torch.zeros(B, 1, self.rope.ndim, dtype=torch.long, device=x.device)
        return self.run(x, valid, coords, q, None, q_coords)[:, 0]  # (B, De)


def block_attention_mask(num_context: int, num_groups: int, group_size: int,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """The (L, L) boolean attention mask (True = attend, L = Nc + M*Kq) of the sequence [context
    (Nc tokens), group 1 (Kq queries), ..., group M]: a context token attends to the context only;
    a query attends to the context and to the queries of its own group."""
    group = torch.cat([torch.full((num_context,), -1, device=device),
                       torch.arange(num_groups, device=device).repeat_interleave(group_size)])  # (L,), -1 = context
    return (group[None, :] == -1) | (group[:, None] == group[None, :])  # (L, L)
