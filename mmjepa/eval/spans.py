"""Masked-span prediction: fill masked spans of a token modality (text) with the context encoder,
the predictor and the model's ``readout`` objective, and measure masked-token top-1 / top-5 accuracy.

- :func:`fill_spans`: token ids + a span mask -> top-k ids/probs per masked position, optionally
  conditioned on other modalities' inputs (image, audio);
- :func:`fill_spans_text`: strings with ``<mask>`` markers -> decoded top-k completions per span
  (one marker = one token; adjacent markers form one multi-token span), distinct and non-empty;
- :func:`masked_token_accuracy`: top-1/top-5 of any predictor of masked tokens on a fixed set of
  masked chunks (used for mmjepa, BERT and the unigram baseline alike);
- ``mmjepa eval spans --model DIR --text FILE``: :func:`run_spans`.

The span modality is the one the model's readout objective reads out; a tokenizer is checked
against the vocabulary fingerprint the model was trained with before any span is filled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import AutoTokenizer

from ..masking import SpanMasking, pack_indices
from ..modalities import get_modality
from ..models import MMJepaModel
from ..objectives import TokenReadout


def readout_of(model: Any) -> TokenReadout:
    """The model's (single) readout objective, or a ValueError that says what is missing."""
    readouts = [o for o in getattr(model, "objectives", {}).values() if isinstance(o, TokenReadout)]
    if not readouts:
        raise ValueError("this model has no readout objective (objectives.<name>.type: readout), so it cannot "
                         "fill spans; train it with one (a text model gets it by default)")
    if len(readouts) > 1:
        raise ValueError(f"this model reads out {[o.modality for o in readouts]}: fill_spans needs exactly one")
    return readouts[0]


@torch.no_grad()
def span_logits(model: Any, input_ids: torch.Tensor, span_mask: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                **other_inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Vocabulary logits at the masked positions.

    input_ids (B, L); span_mask (B, L) bool, True on tokens to predict; attention_mask (B, L) marks
    real tokens (default: every token). Other modalities' model inputs (``pixel_values=``,
    ``input_features=`` ...) join the context. Returns logits (B, K, V), positions (B, K) and
    validity (B, K) bool (None when every row masks K tokens).
    """
    readout = readout_of(model)
    span = readout.modality
    if input_ids.dim() != 2 or span_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and span_mask must both be (B, L), got {tuple(input_ids.shape)} "
                         f"and {tuple(span_mask.shape)}")
    dev = next(model.parameters()).device
    input_ids = input_ids.to(dev)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(dev).bool()
    span_mask = span_mask.to(dev).bool() & real
    n_mask, n_ctx = span_mask.sum(1), (real & ~span_mask).sum(1)
    if (n_mask == 0).any():
        raise ValueError("every sequence needs at least one masked token")
    if (n_ctx == 0).any():
        raise ValueError("every sequence needs at least one unmasked token")
    ctx_idx, ctx_valid = pack_indices([r.nonzero().squeeze(1) for r in (real & ~span_mask).cpu()])
    tgt_idx, tgt_valid = pack_indices([r.nonzero().squeeze(1) for r in span_mask.cpu()])
    ctx_idx, tgt_idx = ctx_idx.to(dev), tgt_idx.to(dev)
    ctx_valid = ctx_valid.to(dev) if ctx_valid is not None else None
    tgt_valid = tgt_valid.to(dev) if tgt_valid is not None else None

    was_training = model.training
    model.eval()
    try:
        context = [(span, model.encoders[span](input_ids, ctx_idx, ctx_valid), ctx_idx, ctx_valid)]
        others = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in other_inputs.items()}
        for name in model.modality_names:  # optional conditioning on the other modalities
            mod = get_modality(name)
            if name == span or others.get(mod.input_key) is None:
                continue
            valid = mod.valid_tokens(others)
            z = model.encoders[name](others[mod.input_key], None, valid)  # (B, N, D)
            idx = torch.arange(z.shape[1], device=dev).expand(z.shape[0], -1)
            context.append((name, z, idx, valid))
        tv = tgt_valid.unsqueeze(1) if tgt_valid is not None else None
        pred = model.predictor(context, span, tgt_idx.unsqueeze(1), tv)  # (B, K, D)
        logits = readout.logits(pred).float()  # (B, K, V)
    finally:
        model.train(was_training)
    return logits, tgt_idx, tgt_valid


@torch.no_grad()
def fill_spans(model: Any, input_ids: torch.Tensor, span_mask: torch.Tensor | None = None, top_k: int = 5,
               attention_mask: torch.Tensor | None = None, **other_inputs: Any) -> dict[str, torch.Tensor]:
    """Top-k predictions for every masked token.

    ``span_mask`` (B, L) bool defaults to ``input_ids == mask_token_id`` (the span modality's
    option). Returns a dict with ``positions`` (B, K), ``valid`` (B, K) bool, ``top_ids``
    (B, K, top_k), ``top_probs`` (B, K, top_k) and ``logits`` (B, K, V).
    """
    _check_top_k(top_k)
    if not isinstance(input_ids, torch.Tensor) or (span_mask is not None and not isinstance(span_mask, torch.Tensor)):
        raise TypeError("input_ids and span_mask must be torch tensors (B, L)")
    if span_mask is None:
        span_mask = input_ids == model.config.modality_config(readout_of(model).modality).mask_token_id
    logits, pos, valid = span_logits(model, input_ids, span_mask, attention_mask, **other_inputs)
    top_k = min(top_k, logits.shape[-1])
    probs, ids = logits.softmax(-1).topk(top_k, dim=-1)
    if valid is None:
        valid = torch.ones(pos.shape, dtype=torch.bool, device=pos.device)
    return {"positions": pos, "valid": valid, "top_ids": ids, "top_probs": probs, "logits": logits}


MAX_BEAMS = 1000  # token sequences kept per span while ranking completions (bounds time and memory)


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int >= 1, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def _k_best(probs: torch.Tensor, ids: torch.Tensor, k: int) -> list[tuple[list[int], float]]:
    """Best ``k`` token sequences of a span whose positions are predicted independently.

    probs/ids (S, n) per position, best first -> [(ids, prob)] ranked by the product of probs."""
    beams: list[tuple[list[int], float]] = [([], 1.0)]
    for p_row, i_row in zip(probs.tolist(), ids.tolist()):
        beams = sorted(((seq + [i], sp * p) for seq, sp in beams for p, i in zip(p_row, i_row)),
                       key=lambda t: -t[1])[:k]
    return beams


def _completions(probs: torch.Tensor, ids: torch.Tensor, tokenizer: Any, k: int) -> list[tuple[str, float]]:
    """The ``k`` best distinct, non-empty decoded completions of one span. Token sequences that
    decode to the same string are one completion (their probabilities add up); sequences that
    decode to nothing (special tokens, a bare word boundary) are dropped."""
    merged: dict[str, float] = {}
    for seq, p in _k_best(probs, ids, min(max(4 * k, 20), MAX_BEAMS)):
        text = tokenizer.decode(seq, skip_special_tokens=True).strip()
        if text:
            merged[text] = merged.get(text, 0.0) + p
    return sorted(merged.items(), key=lambda t: -t[1])[:k]


def fill_spans_text(model: Any, tokenizer: Any, texts: str | Sequence[str], top_k: int = 5,
                    **other_inputs: Any) -> list[list[list[tuple[str, float]]]]:
    """Fill the ``<mask>`` spans of ``texts``.

    Each mask marker stands for one token; adjacent markers form one span of several tokens.
    ``tokenizer`` must be the one the model was trained with (its vocabulary fingerprint is
    checked). Returns, per text, per span (left to right), up to ``top_k`` distinct, non-empty
    (completion, probability) pairs. Other modalities' model inputs (``pixel_values=`` ...) condition
    the prediction.
    """
    readout = readout_of(model)
    cfg = model.config.modality_config(readout.modality)
    processor = get_modality(readout.modality).build_processor(cfg, tokenizer=tokenizer)  # checks the vocabulary
    _check_top_k(top_k)
    if not isinstance(texts, (str, list, tuple)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no text given")
    marker = tokenizer.mask_token
    if marker is None:
        raise ValueError("the tokenizer has no mask token")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        if marker not in t:
            shown = repr(t) if len(t) <= 60 else repr(t[:60]) + f"... ({len(t)} characters)"
            raise ValueError(f"text {shown} has no {marker} marker")
    enc = processor(texts)
    ids, att = enc["input_ids"], enc["attention_mask"]
    if (ids == tokenizer.mask_token_id).sum(1).lt(torch.tensor([t.count(marker) for t in texts])).any():
        raise ValueError(f"a text is longer than max_length={cfg.max_length} tokens: some {marker} were cut off")
    n = min(max(4 * top_k, 20), cfg.vocab_size)
    out = fill_spans(model, ids, ids == tokenizer.mask_token_id, top_k=n, attention_mask=att, **other_inputs)
    results = []
    for b in range(len(texts)):
        pos = out["positions"][b][out["valid"][b]].tolist()
        probs, tops = out["top_probs"][b], out["top_ids"][b]
        spans, start = [], 0
        for j in range(1, len(pos) + 1):  # group adjacent masked positions into spans
            if j == len(pos) or pos[j] != pos[j - 1] + 1:
                spans.append((start, j))
                start = j
        results.append([_completions(probs[a:e], tops[a:e], tokenizer, top_k) for a, e in spans])
    return results


# ----------------------------------------------------------------------------- evaluation
def chunk_ids(ids: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
    """A 1-D token stream -> (n, length) non-overlapping chunks (the remainder is dropped)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one chunk of {length}")
    return ids[: n * length].reshape(n, length)


def span_masks(num: int, length: int, sampler: SpanMasking, seed: int = 0) -> torch.Tensor:
    """(num, length) bool span masks drawn with a fixed seed (the same for every model compared)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([sampler.sample(length, g) for _ in range(num)])


@torch.no_grad()
def masked_token_accuracy(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunks: torch.Tensor,
                          masks: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``predict(input_ids (B, L), span_mask (B, L)) -> logits (n_masked, V)``
    (rows in row-major order of the masked positions) on ``chunks`` with ``masks``."""
    hit1 = hit5 = total = 0
    for i in range(0, len(chunks), batch_size):
        ids, m = chunks[i : i + batch_size], masks[i : i + batch_size]
        logits = predict(ids, m)
        labels = ids[m].to(logits.device)  # (n_masked,)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (n_masked, 5)
        hit1 += int((top[:, 0] == labels).sum())
        hit5 += int((top == labels[:, None]).any(1).sum())
        total += len(labels)
    return {"top1": hit1 / total, "top5": hit5 / total, "num_masked": total}


def mmjepa_predictor(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``predict`` function of :func:`masked_token_accuracy` for an mmjepa model."""

    def predict(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        logits, _, valid = span_logits(model, ids, m)
        return logits.reshape(-1, logits.shape[-1]) if valid is None else logits[valid]

    return predict


def run_spans(args: Any) -> int:
    """``mmjepa eval spans``: masked-token top-1 / top-5 accuracy of a saved model on a text file
    (parsed arguments: model, text, tokenizer, mask_ratio, max_chunks, batch_size, seed, json)."""
    model = MMJepaModel.from_pretrained(args.model).eval()
    readout = readout_of(model)
    cfg = model.config.modality_config(readout.modality)
    ref = args.tokenizer or (args.model if (Path(args.model) / "tokenizer_config.json").exists() else cfg.tokenizer)
    if not ref:
        raise ValueError("no tokenizer in the model folder and none recorded in its config; pass --tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(ref)
    get_modality(readout.modality).build_processor(cfg, tokenizer=tokenizer)  # refuses a tokenizer of another vocabulary
    ids = tokenizer(Path(args.text).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    chunks = chunk_ids(ids, cfg.max_length)
    if args.max_chunks:
        chunks = chunks[: args.max_chunks]
    sampler = SpanMasking(cfg.max_length, args.mask_ratio or cfg.mask_ratio, cfg.mean_span, cfg.max_span)
    masks = span_masks(len(chunks), cfg.max_length, sampler, args.seed)
    result = masked_token_accuracy(mmjepa_predictor(model), chunks, masks, args.batch_size)
    result.update(model=args.model, text=args.text, tokenizer=str(ref), chunks=len(chunks),
                  mask_ratio=sampler.mask_ratio)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
