"""Text modality: tokenizer-backed processor, token embedding with 1-D positions, span masking.

Masked-span prediction reads tokens back out of predicted latents with the ``readout`` objective
(``mmjepa.objectives.readout``), which a text model gets by default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers import initialization as init

from mmjepa.layers import sincos_1d
from mmjepa.masking import SpanMasking
from mmjepa.paths import local_or_hub

from .base import Modality, register_modality


@dataclass
class TextConfig:
    """Options of the text modality (stored under ``config.modalities["text"]``).

    ``vocab_size`` and the special ids must match the tokenizer (``mmjepa tokenizer train`` puts
    pad/unk/bos/eos/mask at ids 0..4, the defaults here). ``tokenizer`` is a folder or Hub id that
    ``AutoTokenizer.from_pretrained`` loads for the processor. Span masking hides ``mask_ratio`` of
    the real tokens in spans whose lengths follow a geometric distribution clipped to
    ``[1, max_span]`` with mean ``mean_span``. ``vocab_fingerprint`` records the tokenizer's
    vocabulary when a run starts; processors and span filling refuse a tokenizer that differs.
    """

    vocab_size: int = 8000
    max_length: int = 128
    pad_token_id: int = 0
    mask_token_id: int = 4
    tokenizer: str | None = field(default=None, metadata={"path": True})  # resolved against a recipe
    mask: str = "span"
    mask_ratio: float = 0.25
    mean_span: float = 3.0
    max_span: int = 10
    embed_init_std: float | None = None  # token-vector init std; None: 0.3 with added sin-cos positions, 0.02 with RoPE
    vocab_fingerprint: str | None = None

    def __post_init__(self):
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        for name in ("pad_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} ({getattr(self, name)}) must lie in [0, vocab_size={self.vocab_size})")
        if self.embed_init_std is not None and not self.embed_init_std > 0:
            raise ValueError(f"embed_init_std must be > 0, got {self.embed_init_std}")
        if self.mask != "span":
            raise ValueError(f"mask must be 'span', got {self.mask!r}")
        SpanMasking(self.max_length, self.mask_ratio, self.mean_span, self.max_span)  # validates


# ----------------------------------------------------------------------------- embedding
class TokenEmbed(nn.Module):
    """(B, L) token ids, L <= ``max_length`` -> (B, L, D) token embeddings + fixed 1-D sin-cos positions."""

    def __init__(self, cfg: TextConfig, dim: int, add_positions: bool = True):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.num_tokens = cfg.max_length
        self.add_positions = add_positions
        # added sin-cos positions have an rms of ~0.7 per channel: token vectors of BERT's 0.02 would
        # be drowned by them and learn very slowly, so they start at a comparable scale then
        self.init_std = cfg.embed_init_std if cfg.embed_init_std is not None else (0.3 if add_positions else 0.02)
        self.tok = nn.Embedding(cfg.vocab_size, dim)
        self.register_buffer("pos_embed", self.position_table(dim).unsqueeze(0), persistent=True)  # (1, N, D)
        self.register_buffer("coords", self.grid_coords(), persistent=False)  # (N, 1)

    def grid_coords(self) -> torch.Tensor:
        return torch.arange(self.num_tokens).unsqueeze(1)  # (N, 1)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token table (V, D), as transformers models name it (a tied read-out head uses it)."""
        return self.tok

    def position_table(self, dim: int) -> torch.Tensor:
        return sincos_1d(dim, torch.arange(self.num_tokens))  # (N, dim)

    def reset_buffers(self) -> None:
        """(Re)initialise the token table (trunc-normal) and the fixed tables; tensors loaded from a
        checkpoint are left alone (transformers' ``init`` functions skip them)."""
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


# ----------------------------------------------------------------------------- tokenizer
def load_tokenizer(ref: str) -> Any:
    """``AutoTokenizer.from_pretrained(ref)`` with a clear error for a local folder that is missing."""
    ref = local_or_hub(ref, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise ValueError(f"tokenizer: could not load {ref!r}: {str(err).splitlines()[0]}") from None


def vocab_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary (every token with its id)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def check_tokenizer(cfg: "TextConfig", tokenizer: Any) -> None:
    """Raise ValueError when ``tokenizer`` does not fit the text options (size, special ids, and the
    vocabulary the model was trained with, when the config records its fingerprint)."""
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but vocab_size is {cfg.vocab_size}")
    for name in ("pad_token_id", "mask_token_id"):
        if getattr(tokenizer, name) != getattr(cfg, name):
            raise ValueError(f"tokenizer {name} {getattr(tokenizer, name)} != config {getattr(cfg, name)}")
    if cfg.vocab_fingerprint and vocab_fingerprint(tokenizer) != cfg.vocab_fingerprint:
        raise ValueError(f"this tokenizer's vocabulary (fingerprint {vocab_fingerprint(tokenizer)}) is not the one the "
                         f"model was trained with ({cfg.vocab_fingerprint}); its token ids would mean other words")


# ----------------------------------------------------------------------------- processor
class TextProcessor:
    """Strings -> ``input_ids`` (B, max_length) int64 and ``attention_mask`` (B, max_length) int64.

    Wraps a transformers tokenizer (given, or loaded from ``cfg.tokenizer``); texts are truncated to
    ``max_length`` and padded to it. The tokenizer must match the options (see :func:`check_tokenizer`).
    """

    def __init__(self, cfg: TextConfig | None = None, tokenizer: Any = None, **overrides):
        self.cfg = cfg or TextConfig(**overrides)
        if tokenizer is None and self.cfg.tokenizer:
            tokenizer = load_tokenizer(self.cfg.tokenizer)
        self.tokenizer = tokenizer
        if tokenizer is not None:
            check_tokenizer(self.cfg, tokenizer)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this TextProcessor has no tokenizer: pass tokenizer= or set the text option "
                             "`tokenizer` to a folder made by `mmjepa tokenizer train`")
        return self.tokenizer

    def __call__(self, text: str | Sequence[str], return_tensors: str | None = "pt",
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        tok = self._need_tokenizer()
        if not isinstance(text, (str, list, tuple)):
            raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("no text given")
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"text must be a string or a list of strings, got {type(t).__name__}")
            if not t.strip():
                raise ValueError("text is empty")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text must be valid Unicode: it holds lone surrogate code points "
                                 "(decode bytes with errors='replace')") from None
        enc = tok(texts, add_special_tokens=add_special_tokens, truncation=True, max_length=self.cfg.max_length,
                  padding="max_length", return_tensors="pt")
        return BatchFeature({"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()})


@register_modality
class TextModality(Modality):
    name = "text"
    input_key = "input_ids"
    config_class = TextConfig
    embed_class = TokenEmbed
    processor_class = TextProcessor
    processor_arg = "text"
    hf_role = "tokenizer"
    extensions = ("txt", "text")
    takes_strings = True
    sample_keys = ("attention_mask",)
    # masked-span prediction reads tokens back out of the predicted latents
    default_objectives = {"readout": {"type": "readout", "modality": "text"}}

    @classmethod
    def decode(cls, data: bytes, ext: str, cfg: TextConfig) -> str:
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"text is not valid UTF-8: {err}") from None

    @classmethod
    def resolve_config(cls, cfg: TextConfig) -> dict[str, Any]:
        """Load the tokenizer the options name (a missing folder -> "no such folder"), check it
        against them, and record its vocabulary fingerprint."""
        if not cfg.tokenizer:
            return {}
        tok = load_tokenizer(cfg.tokenizer)
        try:
            check_tokenizer(cfg, tok)
        except ValueError as err:  # say what fits (a pretrained encoder's tokenizer has its own ids)
            if "fingerprint" in str(err):
                raise
            raise ValueError(f"{err}: set vocab_size: {len(tok)}, pad_token_id: {tok.pad_token_id}, mask_token_id: "
                             f"{tok.mask_token_id} (the tokenizer's)") from None
        return {"vocab_fingerprint": vocab_fingerprint(tok)}

    @classmethod
    def hf_object(cls, processor: TextProcessor) -> Any:
        return processor.tokenizer  # None when the processor has none: nothing is saved

    @classmethod
    def from_hf_object(cls, cfg: TextConfig, obj: Any) -> TextProcessor:
        return TextProcessor(cfg, tokenizer=obj)

    @classmethod
    def build_mask_sampler(cls, cfg: TextConfig) -> SpanMasking:
        return SpanMasking(cfg.max_length, cfg.mask_ratio, cfg.mean_span, cfg.max_span)

    @classmethod
    def valid_tokens(cls, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, L) bool: ``input_ids_valid`` from the collator, else the tokenizer's ``attention_mask``."""
        valid = batch.get("input_ids_valid")
        if valid is None:
            valid = batch.get("attention_mask")
        return None if valid is None else valid.bool()

    @classmethod
    def collate(cls, samples: list[dict[str, Any]], cfg: TextConfig) -> dict[str, torch.Tensor]:
        """Pad per-sample ``input_ids`` (1-D) to ``max_length`` -> ``input_ids`` (B, L) and
        ``input_ids_valid`` (B, L) bool (the sample's ``attention_mask`` when it has one)."""
        ids, valid = [], []
        for s in samples:
            x = torch.as_tensor(s["input_ids"], dtype=torch.long).reshape(-1)
            v = s.get("attention_mask")
            v = torch.ones_like(x, dtype=torch.bool) if v is None else torch.as_tensor(v).reshape(-1).bool()
            ids.append(x)
            valid.append(v)
        L = cfg.max_length
        out = torch.full((len(ids), L), cfg.pad_token_id, dtype=torch.long)
        ok = torch.zeros(len(ids), L, dtype=torch.bool)
        for i, (x, v) in enumerate(zip(ids, valid)):
            if len(x) > L:
                raise ValueError(f"sample {i} has {len(x)} tokens, more than max_length={L}")
            out[i, : len(x)] = x
            ok[i, : len(x)] = v
        return {"input_ids": out, "input_ids_valid": ok}
