"""Train a SentencePiece-style tokenizer and save it as a transformers tokenizer.

``mmjepa tokenizer train --input FILE... --vocab-size N --model-type unigram|bpe --output DIR``

The tokenizer is trained with the ``tokenizers`` library's SentencePiece trainers (Unigram or BPE over
Metaspace pre-tokens, as SentencePiece does), wrapped in ``PreTrainedTokenizerFast`` and written with
``save_pretrained`` so that ``AutoTokenizer.from_pretrained(DIR)`` loads it. It always knows the
special tokens ``<pad>``, ``<unk>``, ``<s>`` (bos), ``</s>`` (eos) and ``<mask>``; ``<mask>`` strips
the space before it, so ``"To be, or <mask> to be"`` masks the word ``▁not`` with its leading space.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken
from tokenizers.implementations import SentencePieceBPETokenizer, SentencePieceUnigramTokenizer
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<s>", "</s>", "<mask>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, MASK]  # ids 0..4, in this order
MODEL_TYPES = ("unigram", "bpe")


def train_tokenizer(
    files: Sequence[str | Path] | None = None,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    texts: Iterable[str] | None = None,
    add_bos_eos: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style tokenizer on text ``files`` (or an iterable of ``texts``).

    Returns a ``PreTrainedTokenizerFast`` with pad/unk/bos/eos/mask set (ids 0..4). With
    ``add_bos_eos`` the tokenizer wraps every encoded text in ``<s> ... </s>`` when called with
    ``add_special_tokens=True`` (the default).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if vocab_size < len(SPECIAL_TOKENS) + 2:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 2}, got {vocab_size}")
    if (files is None) == (texts is None):
        raise ValueError("give exactly one of files= or texts=")
    if files is not None:
        files = [str(f) for f in files]
        if not files:
            raise ValueError("no input files given")
        for f in files:
            p = Path(f)
            if not p.is_file():
                raise ValueError(f"tokenizer input {f!r} is not a file")
            if p.stat().st_size == 0:
                raise ValueError(f"tokenizer input {f!r} is empty")
    specials = list(SPECIAL_TOKENS)
    if model_type == "unigram":
        sp = SentencePieceUnigramTokenizer()
        kw = dict(vocab_size=vocab_size, special_tokens=specials, unk_token=UNK, show_progress=False)
    else:
        sp = SentencePieceBPETokenizer(unk_token=UNK)
        kw = dict(vocab_size=vocab_size, special_tokens=specials, show_progress=False, min_frequency=2)
    if files is not None:
        sp.train(files, **kw)
    else:
        sp.train_from_iterator(texts, **kw)
    backend = sp._tokenizer  # the trained ``tokenizers.Tokenizer``
    for i, tok in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(tok) != i:
            raise RuntimeError(f"special token {tok} got id {backend.token_to_id(tok)}, expected {i}")
    # ``<mask>`` absorbs the space before it (as RoBERTa's does), so "or <mask> to" masks "▁not"
    backend.add_special_tokens([AddedToken(MASK, lstrip=True, rstrip=False, special=True, normalized=False)])
    if add_bos_eos:
        backend.post_processor = TemplateProcessing(
            single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
            special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS)), (EOS, SPECIAL_TOKENS.index(EOS))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS, mask_token=MASK,
    )


def run(args: argparse.Namespace) -> int:
    """``mmjepa tokenizer train`` with parsed arguments (see ``mmjepa_cli``)."""
    tok = train_tokenizer(args.input, args.vocab_size, args.model_type, add_bos_eos=not args.no_bos_eos)
    tok.save_pretrained(args.output)
    print(f"saved a {args.model_type} tokenizer with {len(tok)} tokens to {args.output}")
    return 0
