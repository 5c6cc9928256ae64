"""Text modality: tokenizer-backed processor, token embedding with 1-D positions, span masking,
and the readout head that turns predicted latents back into vocabulary logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmjepa.layers import sincos_1d

from .base import Modality, register_modality


@dataclass
class TextConfig:
    """Options of the text modality (stored under ``config.modalities["text"]``).

    ``vocab_size`` and the special ids must match the tokenizer (``mmjepa tokenizer train`` puts
    pad/unk/bos/eos/mask at ids 0..4, the defaults here). ``tokenizer`` is a folder or Hub id that
    ``AutoTokenizer.from_pretrained`` loads for the processor. Span masking hides ``mask_ratio`` of
    the real tokens in spans whose lengths follow a geometric distribution clipped to
    ``[1, max_span]`` with mean ``mean_span``. The readout head (``readout``) is trained with
    cross-entropy on the masked tokens, weighted by ``readout_weight``; ``readout_stop_grad`` keeps
    that loss out of the predictor and encoder.
    """

    vocab_size: int = 8000
    max_length: int = 128
    pad_token_id: int = 0
    mask_token_id: int = 4
    tokenizer: str | None = None
    mask: str = "span"
    mask_ratio: float = 0.25
    mean_span: float = 3.0
    max_span: int = 10
    readout: bool = True
    readout_weight: float = 1.0
    readout_stop_grad: bool = False

    def __post_init__(self):
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        for name in ("pad_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} ({getattr(self, name)}) must lie in [0, vocab_size={self.vocab_size})")
        if self.mask != "span":
            raise ValueError(f"mask must be 'span', got {self.mask!r}")
        if self.readout_weight < 0:
            raise ValueError(f"readout_weight must be >= 0, got {self.readout_weight}")
        SpanMasking(self.max_length, self.mask_ratio, self.mean_span, self.max_span)  # validates


# ----------------------------------------------------------------------------- span masking
def geometric_p_for_mean(mean: float, max_span: int) -> float:
    """The p of a geometric distribution on {1, 2, ...} that, truncated to ``[1, max_span]``
    and renormalised, has the given ``mean`` (found by bisection; the mean falls as p grows)."""
    if not 1.0 <= mean < (max_span + 1) / 2 or max_span < 1:
        raise ValueError(f"mean_span must lie in [1, (max_span + 1) / 2) = [1, {(max_span + 1) / 2}), got {mean}")
    if mean == 1.0:
        return 1.0
    def truncated_mean(p: float) -> float:  # plain Python: configs may be built under a meta device
        w = [p * (1 - p) ** (k - 1) for k in range(1, max_span + 1)]
        return sum(wk * k for k, wk in enumerate(w, start=1)) / sum(w)

    lo, hi = 1e-9, 1.0 - 1e-12
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if truncated_mean(mid) > mean:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def pack_indices(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Variable-length index rows -> (B, K) int64 padded with 0, and (B, K) bool validity (None
    when every row has the same length)."""
    lengths = [len(r) for r in rows]
    K = max(lengths)
    out = torch.zeros(len(rows), K, dtype=torch.long)
    valid = torch.zeros(len(rows), K, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return out, (None if min(lengths) == K else valid)


@dataclass
class SpanMasking:
    """SpanBERT/T5-style span masking over a 1-D token sequence.

    Per sample, ``round(mask_ratio * L)`` of its ``L`` real tokens are hidden, in spans whose
    lengths are drawn from a geometric distribution clipped to ``[1, max_span]`` (mean
    ``mean_span``; the last span is shortened to hit the ratio exactly). Spans never touch each
    other, so every run of masked tokens is one span. The masked tokens form the sample's single
    target group; the other real tokens are its context. Returns a mask set with ``context``
    (B, Kc), ``target`` (B, 1, Kt) and validity masks when lengths differ across the batch.
    """

    num_tokens: int
    mask_ratio: float = 0.25
    mean_span: float = 3.0
    max_span: int = 10

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        self.p = geometric_p_for_mean(float(self.mean_span), int(self.max_span))
        self.length_probs = [self.p * (1 - self.p) ** (k - 1) for k in range(1, self.max_span + 1)]  # unnormalised

    def span_lengths(self, n_mask: int, g: torch.Generator) -> list[int]:
        """Clipped-geometric span lengths summing to exactly ``n_mask``."""
        lengths: list[int] = []
        total = 0
        probs = torch.tensor(self.length_probs, dtype=torch.float64, device="cpu")
        while total < n_mask:
            draw = torch.multinomial(probs, 16, replacement=True, generator=g) + 1
            for length in draw.tolist():
                length = min(length, n_mask - total)
                lengths.append(length)
                total += length
                if total == n_mask:
                    break
        return lengths

    def sample(self, length: int, g: torch.Generator) -> torch.Tensor:
        """A (length,) bool mask, True on masked tokens."""
        if length < 2:
            raise ValueError(f"span masking needs at least 2 real tokens per sample, got {length}")
        n_mask = min(max(1, int(round(self.mask_ratio * length))), length - 1)
        lengths = self.span_lengths(n_mask, g)
        n_keep = length - n_mask
        while len(lengths) - 1 > n_keep:  # too many spans to keep them apart: merge two
            last = lengths.pop()
            lengths[int(torch.randint(len(lengths), (1,), generator=g))] += last
        order = torch.randperm(len(lengths), generator=g).tolist()
        lengths = [lengths[i] for i in order]
        k = len(lengths)
        extra = n_keep - (k - 1)  # unmasked tokens free to place among the k + 1 gaps
        cuts = torch.randperm(extra + k, generator=g)[:k].sort().values.tolist()  # stars and bars
        gaps, prev = [], -1
        for c in cuts:
            gaps.append(c - prev - 1)
            prev = c
        mask = torch.zeros(length, dtype=torch.bool)
        pos = 0
        for i, span in enumerate(lengths):
            pos += gaps[i] + (1 if i > 0 else 0)
            mask[pos : pos + span] = True
            pos += span
        return mask

    def __call__(self, batch_size: int, generator: torch.Generator, valid: torch.Tensor | None = None,
                 **_: Any) -> dict[str, torch.Tensor]:
        contexts, targets = [], []
        for b in range(batch_size):
            real = valid[b].nonzero().squeeze(1) if valid is not None else torch.arange(self.num_tokens)  # (L,)
            m = self.sample(len(real), generator)
            targets.append(real[m])
            contexts.append(real[~m])
        context, cv = pack_indices(contexts)
        target, tv = pack_indices(targets)
        out = {"context": context, "target": target.unsqueeze(1)}  # (B, Kc), (B, 1, Kt)
        if cv is not None:
            out["context_valid"] = cv
        if tv is not None:
            out["target_valid"] = tv.unsqueeze(1)
        return out


# ----------------------------------------------------------------------------- embedding
class TokenEmbed(nn.Module):
    """(B, L) token ids, L <= ``max_length`` -> (B, L, D) token embeddings + fixed 1-D sin-cos positions."""

    def __init__(self, cfg: TextConfig, dim: int, add_positions: bool = True, init_std: float = 0.02):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.num_tokens = cfg.max_length
        self.add_positions = add_positions
        self.init_std = init_std
        self.tok = nn.Embedding(cfg.vocab_size, dim)
        self.register_buffer("pos_embed", self.position_table(dim).unsqueeze(0), persistent=True)  # (1, N, D)
        self.register_buffer("coords", self.grid_coords(), persistent=False)  # (N, 1)

    def grid_coords(self) -> torch.Tensor:
        return torch.arange(self.num_tokens).unsqueeze(1)  # (N, 1)

    def position_table(self, dim: int) -> torch.Tensor:
        return sincos_1d(dim, torch.arange(self.num_tokens))  # (N, dim)

    def reset_buffers(self) -> None:
        """(Re)initialise the token table (trunc-normal) and the fixed tables; tensors loaded from a
        checkpoint are left alone (transformers' ``init`` functions skip them)."""
        from transformers import initialization as init

        init.trunc_normal_(self.tok.weight, std=self.init_std)
        init.copy_(self.pos_embed, self.position_table(self.dim).unsqueeze(0))
        self.coords = self.grid_coords().to(self.pos_embed.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.shape[1] > self.num_tokens:
            raise ValueError(f"input_ids must have shape (B, L) with L <= {self.num_tokens}, "
                             f"got {tuple(input_ids.shape)}; use TextProcessor to prepare text")
        if input_ids.dtype.is_floating_point:
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]; does the tokenizer match vocab_size?")
        x = self.tok(input_ids)  # (B, L, D)
        return x + self.pos_embed[:, : input_ids.shape[1]] if self.add_positions else x


class TextReadout(nn.Module):
    """BERT-style MLM head on predicted latents: dense -> GELU -> LayerNorm -> vocabulary logits."""

    def __init__(self, dim: int, cfg: TextConfig, eps: float = 1e-6):
        super().__init__()
        self.cfg = cfg
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, cfg.vocab_size)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(latents))))  # (..., V)

    def loss(self, pred: torch.Tensor, input_ids: torch.Tensor, target_idx: torch.Tensor,
             target_valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the masked tokens and top-1 accuracy.

        pred (B*M, Kt, D) predicted latents (sample-major), input_ids (B, L), target_idx (B, M, Kt).
        """
        B, M, Kt = target_idx.shape
        labels = torch.gather(input_ids, 1, target_idx.reshape(B, M * Kt)).reshape(B * M * Kt)
        if self.cfg.readout_stop_grad:
            pred = pred.detach()
        logits = self(pred).reshape(B * M * Kt, -1).float()  # (B*M*Kt, V)
        if target_valid is not None:
            labels = labels.masked_fill(~target_valid.reshape(-1), -100)
        ce = F.cross_entropy(logits, labels, ignore_index=-100)
        keep = labels != -100
        acc = (logits.argmax(-1)[keep] == labels[keep]).float().mean()
        return ce, acc.detach()


# ----------------------------------------------------------------------------- processor
class TextProcessor:
    """Strings -> ``input_ids`` (B, max_length) int64 and ``attention_mask`` (B, max_length) int64.

    Wraps a transformers tokenizer (given, or loaded from ``cfg.tokenizer``); texts are truncated to
    ``max_length`` and padded to it.
    """

    def __init__(self, cfg: TextConfig | None = None, tokenizer: Any = None, **overrides):
        self.cfg = cfg or TextConfig(**overrides)
        if tokenizer is None and self.cfg.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.cfg.tokenizer)
        self.tokenizer = tokenizer
        if tokenizer is not None:
            if len(tokenizer) > self.cfg.vocab_size:
                raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but vocab_size is {self.cfg.vocab_size}")
            for name in ("pad_token_id", "mask_token_id"):
                if getattr(tokenizer, name) != getattr(self.cfg, name):
                    raise ValueError(f"tokenizer {name} {getattr(tokenizer, name)} != config {getattr(self.cfg, name)}")

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this TextProcessor has no tokenizer: pass tokenizer= or set the text option "
                             "`tokenizer` to a folder made by `mmjepa tokenizer train`")
        return self.tokenizer

    def __call__(self, text: str | Sequence[str], return_tensors: str | None = "pt",
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("no text given")
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"text must be a string or a list of strings, got {type(t).__name__}")
            if not t.strip():
                raise ValueError("text is empty")
        enc = tok(texts, add_special_tokens=add_special_tokens, truncation=True, max_length=self.cfg.max_length,
                  padding="max_length", return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def fill_spans(self, model: Any, texts: str | Sequence[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
        """Fill the ``<mask>`` spans of ``texts``: per text, per span, the ``top_k`` (completion, prob)."""
        from mmjepa.spans import fill_spans_text

        return fill_spans_text(model, self._need_tokenizer(), texts, top_k=top_k, max_length=self.cfg.max_length)


@register_modality
class TextModality(Modality):
    name = "text"
    input_key = "input_ids"
    config_class = TextConfig
    embed_class = TokenEmbed
    processor_class = TextProcessor

    @classmethod
    def build_mask_sampler(cls, cfg: TextConfig) -> SpanMasking:
        return SpanMasking(cfg.max_length, cfg.mask_ratio, cfg.mean_span, cfg.max_span)

    @classmethod
    def valid_tokens(cls, batch: dict[str, Any], embed: nn.Module) -> torch.Tensor | None:
        """(B, L) bool: ``input_ids_valid`` from the collator, else the tokenizer's ``attention_mask``."""
        valid = batch.get("input_ids_valid")
        if valid is None:
            valid = batch.get("attention_mask")
        return None if valid is None else valid.bool()

    @classmethod
    def collate(cls, samples: list[dict[str, Any]], pad_token_id: int = 0,
                max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pad per-sample ``input_ids`` (1-D) to a common length -> ``input_ids`` (B, L) and
        ``input_ids_valid`` (B, L) bool (the sample's ``attention_mask`` when it has one)."""
        ids, valid = [], []
        for s in samples:
            x = torch.as_tensor(s["input_ids"], dtype=torch.long).reshape(-1)
            v = s.get("attention_mask")
            v = torch.ones_like(x, dtype=torch.bool) if v is None else torch.as_tensor(v).reshape(-1).bool()
            ids.append(x)
            valid.append(v)
        L = max_length or max(len(x) for x in ids)
        out = torch.full((len(ids), L), pad_token_id, dtype=torch.long)
        ok = torch.zeros(len(ids), L, dtype=torch.bool)
        for i, (x, v) in enumerate(zip(ids, valid)):
            if len(x) > L:
                raise ValueError(f"sample {i} has {len(x)} tokens, more than max_length={L}")
            out[i, : len(x)] = x
            ok[i, : len(x)] = v
        return {"input_ids": out, "input_ids_valid": ok}
